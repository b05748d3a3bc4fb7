"""What a training run leaves behind, whatever its save and report settings.

Every run of `PoFTTrainer` writes into its output folder (main process only):
- `log.jsonl`: one JSON line per logged step (loss, learning rate, grad norm and the PoFT metrics
  `poft/weight`, `poft/margin`, `poft/win_rate`, ...), appended and flushed as it is logged, so a killed run
  keeps its curve up to the last log;
- `trainer_state.json` at the end (transformers writes it only into checkpoints, so `save_strategy: no`
  left none);
- `curves.png` at the end: loss and each PoFT metric per step (eval points where there are any).
`--report_to tensorboard` / `wandb` work as in transformers once their extras are installed
(`pip install poft[tensorboard]`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

LOG_FILE = "log.jsonl"
CURVES_FILE = "curves.png"
STATE_FILE = "trainer_state.json"
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

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)

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
    """One panel per metric present in the log (training points as lines, `eval_*` points as markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in CURVE_KEYS if any(_finite(r.get(k)) or _finite(r.get(f"eval_{k}")) for r in log)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        train = [(r["step"], r[key]) for r in log if _finite(r.get(key))]
        evals = [(r["step"], r[f"eval_{key}"]) for r in log if _finite(r.get(f"eval_{key}"))]
        if train:
            ax.plot(*zip(*train, strict=True), label="train", lw=1.2)
        if evals:
            ax.plot(*zip(*evals, strict=True), "o--", label="eval", ms=4)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if train and evals:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
