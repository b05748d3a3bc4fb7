"""What a training run leaves behind, whatever its save and report settings.

Every run of `PoFTTrainer` writes into its output folder (main process only):
- `log.jsonl`: one JSON line per logged step (loss, learning rate, grad norm and the PoFT metrics
  `poft/weight`, `poft/margin`, `poft/win_rate`, ...), appended and flushed as it is logged, so a killed run
  keeps its curve up to the last log;
- `trainer_state.json` at the end (transformers writes it only into checkpoints, so `save_strategy: no`
  left none);
- `curves.png` at the end: loss and each PoFT metric per step (eval points where there are any), and mean tau
  per value of the rows' `label` when the training data has one (`poft/weight_label_true`, `..._false`);
- `row_weights/epoch-N.jsonl` at the end of each epoch N (1 = the first; the last one at the end of training,
  holding the rows a partial last epoch trained on), PoFT and bi-PoFT only (`RowWeights`): one line per
  training row (rows dropped before training are absent), in input order: `row` (its position among the rows
  read), `id`, `where` ("line 12"), `label` (when the data has a `label` column), `step` (the optimizer step
  that last computed it), `r_ref`, `r_theta` (the target's score then, normalised as r_ref) and `tau` (the
  weight of its cross-entropy in the loss: beta * sigmoid(-(beta * (r_theta - r_ref) + gamma)) for PoFT,
  signed for bi-PoFT as `poft/weight` is). Under DDP every process's rows are gathered and the main process
  writes. A checkpoint keeps the rows of the epoch so far (`row_weights_partial.jsonl`), so a resumed run's
  file holds the whole epoch; files of the epochs a resumed run trains again are replaced.
When the user did not set `logging_steps`, a run logs every `auto_logging_steps(total steps)` steps: every
step for a short run, every 10 (TRL's default) from 200 steps on, so every run's curves have points.
`--report_to tensorboard` / `wandb` work as in transformers once their extras are installed
(`pip install poft[tensorboard]`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import TrainerCallback

from .console import say

LOG_FILE = "log.jsonl"
CURVES_FILE = "curves.png"
STATE_FILE = "trainer_state.json"
ROW_WEIGHTS_DIR = "row_weights"  # epoch-N.jsonl inside (inspection.ROW_WEIGHTS_DIR reads it)
PARTIAL_FILE = "row_weights_partial.jsonl"  # in a checkpoint folder: the rows of the epoch so far
WEIGHT_BY_LABEL = "poft/weight_label_"  # + "true" / "false": mean tau of the rows with that label
CURVE_KEYS = (
    "loss",
    "poft/weight",
    "poft/margin",
    "poft/win_rate",
    "poft/nll",
    "rewards/margins",
    "rewards/accuracies",
    "grad_norm",
)


class RunRecord(TrainerCallback):
    """Writes log.jsonl as the run logs, and trainer_state.json + curves.png when it ends."""

    def __init__(self, output_dir: str | Path, auto_logging: bool = False):
        self.output_dir = Path(output_dir)
        self.auto_logging = auto_logging  # logging_steps left unset: chosen here from the total steps

    def on_train_begin(self, args, state, control, **kwargs):
        if self.auto_logging and args.logging_strategy == "steps":  # state.logging_steps: what logs
            state.logging_steps = auto_logging_steps(state.max_steps)
            every = "every step" if state.logging_steps == 1 else f"every {state.logging_steps} steps"
            say(f"logging {every} of {state.max_steps} (--logging_steps unset)")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        with open(self.output_dir / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        state.save_to_json(str(self.output_dir / STATE_FILE))
        log = read_log(self.output_dir / LOG_FILE)
        if log:
            plot_curves(log, self.output_dir / CURVES_FILE)


def auto_logging_steps(total_steps: int) -> int:
    """Steps between logs when the user set none: max(1, min(10, total // 20)), so a 6-step run logs each step
    (TRL's default of 10 left its curves empty) and a run of 200 steps or more logs every 10."""
    return max(1, min(10, total_steps // 20))


def read_log(path: str | Path) -> list[dict]:
    """The records of log.jsonl (a last line cut by a kill is left out)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_curves(log: list[dict], path: str | Path) -> Path | None:
    """One panel per metric present in the log (training points as lines, `eval_*` points as markers), and
    after `poft/weight` one of mean tau per row label (`poft/weight_label_<value>`) when the rows had labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in CURVE_KEYS if any(_finite(r.get(k)) or _finite(r.get(f"eval_{k}")) for r in log)]
    by_label = sorted({k for r in log for k in r if k.startswith(WEIGHT_BY_LABEL) and _finite(r[k])})
    panels = [[k] for k in keys]
    if by_label:
        at = keys.index("poft/weight") + 1 if "poft/weight" in keys else len(keys)
        panels.insert(at, by_label)
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        lines = 0
        for key in panel:
            name = "train" if len(panel) == 1 else f"label={key.removeprefix(WEIGHT_BY_LABEL)}"
            train = [(r["step"], r[key]) for r in log if _finite(r.get(key))]
            evals = [(r["step"], r[f"eval_{key}"]) for r in log if _finite(r.get(f"eval_{key}"))]
            if train:
                ax.plot(*zip(*train, strict=True), ".-" if len(train) < 30 else "-", label=name, lw=1.2)
            if evals:
                ax.plot(*zip(*evals, strict=True), "o--", label=f"eval {name}".removesuffix(" train"), ms=4)
            lines += bool(train) + bool(evals)
        ax.set_title(panel[0] if len(panel) == 1 else "poft/weight (tau) by label", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if lines > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RowWeights(TrainerCallback):
    """Each training row's r_ref, r_theta and tau in the current epoch, written when the epoch ends as
    `row_weights/epoch-N.jsonl` (the module docstring says what a line holds).

    The trainer calls `add` with the rows of each training micro-batch (each process its own); a row seen twice
    in an epoch keeps its last values. At the epoch's end every process's rows are gathered, and the main
    process writes them in row order. `save_partial` / `load_partial` carry the epoch so far through a
    checkpoint. `ids`, `where` and `labels` name the rows read (None: pre-tokenised rows, named by position).
    """

    def __init__(
        self,
        output_dir: str | Path,
        ids: Sequence | None = None,
        where: Sequence[str] | None = None,
        labels: Sequence | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.ids, self.where, self.labels = ids, where, labels
        codes = None if labels is None else [-1 if label is None else int(bool(label)) for label in labels]
        self.label_codes = None if codes is None else torch.tensor(codes, dtype=torch.int8)  # 1 / 0 / -1 none
        self.epoch = 0  # 0-based, as transformers counts; files and lines say epoch + 1
        self.seen: dict[int, tuple] = {}  # row -> (epoch, step, r_ref, r_theta, tau)

    @classmethod
    def for_rows(cls, output_dir: str | Path, read) -> RowWeights:
        """Named by what `readers.read_sft` read (an `SFTRows`; None: pre-tokenised rows), with their `label`
        when the data has one."""
        if read is None:
            return cls(output_dir)
        data = read.dataset
        labels = data["label"] if "label" in data.column_names else None
        if labels is not None and all(label is None for label in labels):
            labels = None
        return cls(output_dir, ids=data["id"], where=read.where, labels=labels)

    def tau_by_label(self, tau: torch.Tensor, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sum of tau and count of a batch's training rows per label (true / false); {} without labels."""
        if self.label_codes is None:
            return {}
        codes = self.label_codes[rows.cpu()].to(tau.device)
        sums = {}
        for name, code in (("true", 1), ("false", 0)):
            chosen = codes == code
            sums[f"tau_label_{name}"] = tau[chosen].sum().float()
            sums[f"rows_label_{name}"] = chosen.sum().float()
        return sums

    def add(self, rows: list[int], step: int, r_ref: list[float], r_theta: list[float], tau: list[float]):
        for row, ref, theta, weight in zip(rows, r_ref, r_theta, tau, strict=True):
            self.seen[row] = (self.epoch, step, ref, theta, weight)

    def on_train_begin(self, args, state, control, **kwargs):
        """Files of the epochs this run trains (again) are removed: a fresh run, or one resumed from a
        checkpoint before them, replaces them."""
        if not state.is_world_process_zero:
            return
        first = int(state.epoch or 0) + 1
        for path in (self.output_dir / ROW_WEIGHTS_DIR).glob("epoch-*.jsonl"):
            if _epoch_of(path) >= first:
                path.unlink()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch = int(state.epoch or 0)  # resumed mid-epoch: e.g. 1.5, the second epoch
        self.seen = {row: v for row, v in self.seen.items() if v[0] == self.epoch}  # a checkpoint's, if any

    def on_epoch_end(self, args, state, control, **kwargs):
        lines = self._gathered_lines()
        if state.is_world_process_zero and lines:
            _write_lines(self.output_dir / ROW_WEIGHTS_DIR / f"epoch-{self.epoch + 1}.jsonl", lines)
        self.seen.clear()

    def save_partial(self, checkpoint: str | Path, is_main: bool) -> None:
        """Write the epoch's rows so far into a checkpoint folder (every process calls it: rows are gathered)."""
        lines = self._gathered_lines()
        if is_main:
            _write_lines(Path(checkpoint) / PARTIAL_FILE, lines)

    def load_partial(self, checkpoint: str | Path) -> None:
        """The rows a checkpoint's epoch had seen (main process; the others' rows are in it already)."""
        path = Path(checkpoint) / PARTIAL_FILE
        for line in read_log(path):
            values = (line["epoch"] - 1, line["step"], line["r_ref"], line["r_theta"], line["tau"])
            self.seen[line["row"]] = values

    def _gathered_lines(self) -> list[dict]:
        """Every process's rows (collective: all processes call it), one line per row, in row order."""
        from accelerate.utils import gather_object

        gathered = gather_object([(row, *values) for row, values in self.seen.items()])
        latest: dict[int, tuple] = {}
        for row, epoch, step, *values in gathered:  # a row repeated to even out the last batch: one line
            if row not in latest or step >= latest[row][1]:
                latest[row] = (epoch, step, *values)
        return [self._line(row, *latest[row]) for row in sorted(latest)]

    def _line(self, row: int, epoch: int, step: int, r_ref: float, r_theta: float, tau: float) -> dict:
        line = {"epoch": epoch + 1, "row": row}
        if self.ids is not None:
            line["id"] = self.ids[row]
        if self.where is not None:
            line["where"] = self.where[row]
        if self.labels is not None:
            line["label"] = self.labels[row]
        return {**line, "step": step, "r_ref": r_ref, "r_theta": r_theta, "tau": tau}


def _epoch_of(path: Path) -> int:
    try:
        return int(path.stem.removeprefix("epoch-"))
    except ValueError:
        return 0


def _write_lines(path: Path, lines: list[dict]) -> None:
    """JSON lines, written to a temporary file and renamed (a kill leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line, default=float) + "\n" for line in lines)
    os.replace(tmp, path)
