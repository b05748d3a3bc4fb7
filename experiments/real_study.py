"""The noise study on real checkpoints: SFT vs PoFT on a real base model, real aligned models, real rows.

    python -m experiments.real_study --output real_study          # from the repository root

What it runs (issue 12, item 4; RESULTS.md "Real models: SFT vs PoFT"):
- rows: the 200 real Alpaca rows of data/alpaca_real.json (GPT-4 answers, CC BY-NC 4.0), split with
  `seed` into `n_train` training rows, `n_heldout` held-out rows (clean NLL after every epoch) and `n_answers`
  prompts answered greedily at the end;
- noise: for each level (0 and 0.3), that share of the training rows replaced, half by another training row's
  answer (`wrong_prompt`), half by the row's answer with characters inserted, deleted or substituted
  (`corrupted`, each character with probability `char_rate`), as `scripts/make_noisy_real_data.py` and the
  paper's noise study make it;
- aligned models: the real instruct models of `scripts/fetch_real_models.py` (SmolLM2-135M-Instruct and
  Qwen2.5-Coder-0.5B-Instruct, each under its own tokenizer and chat template) score every distinct row once
  through `poft.scoring.score_dataset` (the code of `poft score`);
- target: the real *base* model gemma-3-270m with a Gemma chat template, trained by `PoFTTrainer` (the code
  of `poft train`) with objective sft and poft from the same start, data order and learning rate, LoRA on every
  linear layer by default (full fine-tuning with `--full_finetune`), bf16 autocast where the hardware has it;
- measured after every epoch: the mean per-token NLL of the held-out clean answers, and on the training rows
  of noisy runs the target's mean log-prob r_theta and PoFT's weight tau = sigmoid(r_ref - r_theta) by row kind
  (clean / wrong_prompt / corrupted); at the end a few greedy answers.

Every run's result is written as soon as it finishes (`runs/<noise>_<method>.json`); a rerun skips finished
runs and resumes scoring, so a killed study loses at most the run in progress. `table.md`, `answers.md`,
`curves.png` and `results.json` are rewritten from the finished runs at the end.

The checkpoints are 4-bit GGUF copies converted to float32 (their log-probs are close to, not equal to, the
original models'). Fetch them first: `python scripts/fetch_real_models.py` (cache: $POFT_REAL_MODELS or
~/.cache/poft/real-models).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .entry import run_main

PROG = "python -m experiments.real_study"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROWS = ROOT / "data" / "alpaca_real.json"
KINDS = ("clean", "wrong_prompt", "corrupted")


def default_models_dir() -> str:
    cache = os.environ.get("POFT_REAL_MODELS") or str(Path.home() / ".cache" / "poft" / "real-models")
    return str(Path(cache) / "hf")


@dataclass
class RealStudyConfig:
    """Settings of the real-model study; the defaults are what RESULTS.md reports (sized for 2 CPU cores)."""

    output: str = field(default="real_study", metadata={"help": "folder for scores, runs, table and plots"})
    models_dir: str = field(
        default_factory=default_models_dir,
        metadata={"help": "folder of the fetched HF models (scripts/fetch_real_models.py)"},
    )
    rows: str = field(
        default=str(DEFAULT_ROWS), metadata={"help": "Alpaca JSON rows (instruction/input/output)"}
    )
    chat_template: str = field(
        default="gemma",
        metadata={
            "help": "chat template given to the base target: a name shipped with poft, or a .jinja file"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the split, the noise, LoRA init and data order"})
    n_train: int = field(default=64, metadata={"help": "training rows (clean + noisy)"})
    n_heldout: int = field(default=24, metadata={"help": "held-out clean rows: NLL after every epoch"})
    n_answers: int = field(default=4, metadata={"help": "held-out prompts answered greedily at the end"})
    noise_levels: list[float] = field(
        default_factory=lambda: [0.0, 0.3], metadata={"help": "shares of noisy rows"}
    )
    methods: list[str] = field(
        default_factory=lambda: ["sft", "poft"], metadata={"help": "objectives compared"}
    )
    char_rate: float = field(default=0.1, metadata={"help": "per-character edit probability (corrupted)"})
    epochs: int = field(default=3, metadata={"help": "training epochs (evaluated after each)"})
    learning_rate: float = field(default=5e-4, metadata={"help": "peak learning rate (cosine, 5 %% warm-up)"})
    batch_size: int = field(default=8, metadata={"help": "rows per optimizer step"})
    max_length: int = field(default=256, metadata={"help": "tokens per training row at most"})
    full_finetune: bool = field(default=False, metadata={"help": "train every weight instead of LoRA"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (all linear layers)"})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto (bf16 autocast where supported)", "choices": ("auto", "float32", "bfloat16")},
    )
    max_new_tokens: int = field(default=48, metadata={"help": "length of the greedy answers"})

    def __post_init__(self):
        if not all(0 <= x < 1 for x in self.noise_levels):
            raise ValueError(f"--noise_levels must be shares in [0, 1), got {self.noise_levels}")
        for name in ("n_train", "n_heldout", "epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning_rate must be > 0, got {self.learning_rate}")

    @property
    def aligned(self) -> list[str]:
        return [
            f"smol={Path(self.models_dir) / 'smollm2-135m-instruct'}",
            f"qwen={Path(self.models_dir) / 'qwen2.5-coder-0.5b-instruct'}",
        ]

    @property
    def target(self) -> Path:
        return Path(self.models_dir) / "gemma-3-270m"


# ---- data ------------------------------------------------------------------------------------------------------


def alpaca_messages(row: dict) -> list[dict]:
    """The conversation `poft score` / `poft train` read from an Alpaca row (the reader's own conversion)."""
    from poft.readers import sft_messages

    return sft_messages(row, "alpaca")


def split_rows(rows: list[dict], config: RealStudyConfig) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows): disjoint, drawn with the study's seed."""
    need = config.n_train + config.n_heldout
    if len(rows) < need:
        raise ValueError(f"{config.rows}: {len(rows)} rows, the study needs {need} (n_train + n_heldout)")
    order = list(range(len(rows)))
    random.Random(config.seed).shuffle(order)
    train = [rows[i] for i in order[: config.n_train]]
    heldout = [rows[i] for i in order[config.n_train : need]]
    return train, heldout


def noisy_training_rows(train: list[dict], noise: float, config: RealStudyConfig) -> list[dict]:
    """`train` with a `noise` share replaced: half wrong_prompt (another row's answer), half corrupted.

    Rows keep their position; a noisy row gets the id `<id>~<kind>` so that it is a distinct row to score."""
    from .demo.noise import corrupt_chars

    rng = random.Random(f"{config.seed}-{noise}")
    chosen = sorted(rng.sample(range(len(train)), round(noise * len(train))))
    kinds = {i: KINDS[1 + k % 2] for k, i in enumerate(chosen)}
    out = []
    for i, row in enumerate(train):
        kind, output = kinds.get(i, "clean"), row["output"]
        if kind == "wrong_prompt":
            output = train[rng.choice([j for j in range(len(train)) if train[j]["output"] != output])][
                "output"
            ]
        elif kind == "corrupted":
            output = corrupt_chars(output, rng, config.char_rate)
        row_id = row["id"] if kind == "clean" else f"{row['id']}~{kind}"
        out.append({"id": row_id, "instruction": row["instruction"], "input": row.get("input", ""),
                    "output": output, "noise": kind, "label": kind == "clean"})  # fmt: skip
    return out


# ---- evaluation ------------------------------------------------------------------------------------------------


def response_logprobs(
    model, chat, conversations: list[list[dict]], max_length: int, autocast: bool
) -> np.ndarray:
    """Mean log-prob per response token of each conversation under `model` (poft's packed scorer)."""
    import torch

    from poft.logprobs import packed_batches, packed_logprob_sums, scoring_chunk_size

    encoded = [chat.encode(m, max_length) for m in conversations]
    sequences = [(np.asarray(e.input_ids), np.asarray(e.response_mask)) for e in encoded]
    vocab = model.get_output_embeddings().weight.shape[0]
    sums, counts = np.zeros(len(sequences)), np.zeros(len(sequences))
    was_training = model.training
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for batch in packed_batches([len(s[0]) for s in sequences], 4096):
            s, c = packed_logprob_sums(
                model, [sequences[i] for i in batch], chunk_size=scoring_chunk_size(vocab)
            )
            sums[batch], counts[batch] = s, c
    model.train(was_training)
    return sums / np.maximum(counts, 1)


def greedy_answers(
    model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, autocast: bool
) -> list[str]:
    import torch

    stop = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    answers = []
    was_training = model.training
    model.eval()
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)  # fmt: skip
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        answers.append(
            tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        )
    model.train(was_training)
    return answers


def by_kind(values: np.ndarray, kinds: list[str]) -> dict[str, float]:
    return {
        k: float(np.mean([v for v, kk in zip(values, kinds, strict=True) if kk == k]))
        for k in KINDS
        if k in kinds
    }


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---- one run -----------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """What is measured after each epoch: held-out clean NLL, and r_theta / tau on the training rows by kind."""

    heldout: list[list[dict]]
    train: list[list[dict]]
    kinds: list[str]
    ref: np.ndarray

    def measure(self, model, chat, config: RealStudyConfig, autocast: bool) -> dict:
        nll = -response_logprobs(model, chat, self.heldout, config.max_length, autocast)
        result = {"heldout_nll": float(nll.mean())}
        if self.train:
            r_theta = response_logprobs(model, chat, self.train, config.max_length, autocast)
            result["r_theta"] = by_kind(r_theta, self.kinds)
            result["tau"] = by_kind(sigmoid(self.ref - r_theta), self.kinds)
        return result


def train_one(
    method: str, noise: float, data, probe: Probe, config: RealStudyConfig, bar, autocast: bool
) -> dict:
    """Train the target with `method` on `data` (a scored Dataset); evaluate after every epoch."""
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from poft.chat import ChatFormat
    from poft.device import has_gpu
    from poft.trainer import PoFTTrainer
    from poft.training_configs import PoFTConfig

    work = Path(config.output) / "work" / f"{noise}_{method}"
    args = PoFTConfig(
        output_dir=str(work), objective=method, beta=1.0, gamma=0.0, learning_rate=config.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.0, num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size, max_length=config.max_length, seed=config.seed,
        data_seed=config.seed, chat_template_path=config.chat_template, bf16=autocast, use_cpu=not has_gpu(),
        gradient_checkpointing=False, save_strategy="no", logging_steps=1, report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, model_init_kwargs={"dtype": "float32"},
    )  # fmt: skip
    peft = None
    if not config.full_finetune:
        from peft import LoraConfig

        peft = LoraConfig(r=config.lora_r, lora_alpha=2 * config.lora_r, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(config.target)
    trainer = PoFTTrainer(model=str(config.target), args=args, train_dataset=data, peft_config=peft,
                          processing_class=tokenizer)  # fmt: skip
    chat = ChatFormat.from_tokenizer(trainer.processing_class, "gemma-3-270m")
    epochs: list[dict] = []
    started = time.perf_counter()

    class Each(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            bar.update(1)

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            epochs.append({"epoch": round(state.epoch), **probe.measure(model, chat, config, autocast)})
            bar.set_postfix_str(
                f"{noise}/{method} epoch {round(state.epoch)}: NLL {epochs[-1]['heldout_nll']:.3f}"
            )

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Each())
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    weights = [e["poft/weight"] for e in trainer.state.log_history if "poft/weight" in e]
    return {
        "method": method, "noise": noise, "epochs": epochs, "train_seconds": time.perf_counter() - started,
        "losses": losses, "mean_logged_weight_per_epoch": _per_epoch(weights, config.epochs),
        "answers": greedy_answers(trainer.model, trainer.processing_class, probe_prompts(probe, config),
                                  config.max_new_tokens, autocast),
    }  # fmt: skip


def _per_epoch(values: list[float], epochs: int) -> list[float]:
    if not values:
        return []
    chunks = np.array_split(np.asarray(values), epochs)
    return [float(c.mean()) for c in chunks if len(c)]


def probe_prompts(probe: Probe, config: RealStudyConfig) -> list[list[dict]]:
    return [m[:1] for m in probe.heldout[: config.n_answers]]


# ---- the study ---------------------------------------------------------------------------------------------


def run_study(config: RealStudyConfig) -> dict:
    import torch
    from tqdm.auto import tqdm

    from poft.aligned import resolve_dtype
    from poft.configs import ScoreConfig
    from poft.device import has_gpu
    from poft.scoring import score_dataset

    missing = [
        p for p in (config.target, *(Path(s.split("=", 1)[1]) for s in config.aligned)) if not p.is_dir()
    ]
    if missing:
        raise FileNotFoundError(
            f"real models not found: {', '.join(map(str, missing))}; fetch them with "
            "`python scripts/fetch_real_models.py` (cache: $POFT_REAL_MODELS or ~/.cache/poft/real-models)"
        )
    if has_gpu():
        raise NotImplementedError("the study's evaluation runs on CPU; a GPU mode is not written yet")
    dtype = resolve_dtype(config.dtype, torch.device("cpu"))
    if dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(
            f"--dtype must be auto, bfloat16 or float32 (bf16 autocast or not), got {config.dtype!r}"
        )
    autocast = dtype == torch.bfloat16
    rows = json.loads(Path(config.rows).read_text(encoding="utf-8"))
    train, heldout = split_rows(rows, config)  # bad rows or sizes fail before the folder records settings
    out = Path(config.output)
    refuse_other_settings(out, config)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    noisy = {noise: noisy_training_rows(train, noise, config) for noise in config.noise_levels}
    distinct = {r["id"]: r for level in noisy.values() for r in level}
    started = time.perf_counter()

    # 1. every distinct training row scored once by every aligned model (resumes when killed)
    union = out / "rows.jsonl"
    union.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in distinct.values()), encoding="utf-8"
    )
    dtype = "bfloat16" if autocast else "float32"
    scored = score_dataset(
        ScoreConfig(dataset=str(union), model=config.aligned, output=str(out / "scored"), dtype=dtype)
    )
    score_seconds = time.perf_counter() - started
    by_id = {row_id: i for i, row_id in enumerate(scored["id"])}
    ref_of = dict(zip(scored["id"], scored["ref_score"], strict=True))

    heldout_messages = [alpaca_messages(r) for r in heldout]
    plan = [(noise, method) for noise in config.noise_levels for method in config.methods]
    steps = math.ceil(config.n_train / config.batch_size) * config.epochs
    done = {key: _load_run(out, *key) for key in plan}
    bar = tqdm(total=steps * sum(v is None for v in done.values()), unit="step", desc="real study",
               dynamic_ncols=True)  # fmt: skip
    for noise, method in plan:
        if done[(noise, method)] is not None:
            continue
        level = noisy[noise]
        data = scored.select([by_id[r["id"]] for r in level])
        if list(data["id"]) != [r["id"] for r in level]:  # scores joined to the wrong row must never train
            raise RuntimeError(f"{out / 'scored'}: the scored rows do not match the study's rows; delete it")
        kinds = [r["noise"] for r in level]
        probe_rows = [i for i, k in enumerate(kinds) if k != "clean"]
        probe_rows += [i for i, k in enumerate(kinds) if k == "clean"][: len(probe_rows)]
        probe = Probe(heldout_messages, [alpaca_messages(level[i]) for i in probe_rows],
                      [kinds[i] for i in probe_rows], np.array([ref_of[level[i]["id"]] for i in probe_rows]))  # fmt: skip
        base_path = out / "runs" / f"base_{noise}.json"  # epoch 0: the base on this level's probe rows
        base = _load_json(base_path)
        if base is None:
            base = _measure_base(probe, config, autocast)
            base_path.write_text(json.dumps(base, indent=1))
        result = train_one(method, noise, data, probe, config, bar, autocast)
        result["epochs"].insert(0, {"epoch": 0, **base})
        result["ref_score_by_kind"] = by_kind(np.array([ref_of[r["id"]] for r in level]), kinds)
        done[(noise, method)] = result
        (out / "runs" / f"{noise}_{method}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    bar.close()
    summary = {"config": dataclasses.asdict(config), "runs": [done[k] for k in plan],
               "score_seconds_this_call": score_seconds, "wall_seconds_this_call": time.perf_counter() - started,
               "bf16_autocast": autocast}  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    (out / "table.md").write_text(results_table(summary))
    (out / "answers.md").write_text(answers_table(summary, [m[0]["content"] for m in heldout_messages]))
    plot_study(summary, out / "curves.png")
    print((out / "table.md").read_text())
    print(f"poft: real study -> {out} (table.md, answers.md, curves.png, results.json)")
    return summary


def _measure_base(probe: Probe, config: RealStudyConfig, autocast: bool) -> dict:
    """Epoch 0: the base model itself (the same start for every run)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from poft.chat import ChatFormat
    from poft.templates import resolve_chat_template

    tokenizer = AutoTokenizer.from_pretrained(config.target)
    tokenizer.chat_template = Path(resolve_chat_template(config.chat_template)).read_text()
    model = AutoModelForCausalLM.from_pretrained(config.target, dtype="float32")
    return probe.measure(model, ChatFormat.from_tokenizer(tokenizer, "gemma-3-270m"), config, autocast)


def refuse_other_settings(out: Path, config: RealStudyConfig) -> None:
    """A study folder's finished runs are reused by a rerun: refuse one made with other settings (their
    numbers would be reported as this configuration's)."""
    path = out / "config.json"
    if not path.exists():
        return
    before = json.loads(path.read_text())
    now = json.loads(json.dumps(dataclasses.asdict(config)))  # as the file has them (JSON values)
    changed = sorted(k for k in before.keys() | now.keys() if k != "output" and before.get(k) != now.get(k))
    if changed:
        raise ValueError(
            f"{out} holds a study made with other settings ({', '.join(changed)}); its finished runs would be "
            "reused: give another --output or delete the folder"
        )


def _load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _load_run(out: Path, noise: float, method: str) -> dict | None:
    return _load_json(out / "runs" / f"{noise}_{method}.json")


# ---- report ------------------------------------------------------------------------------------------------


def results_table(summary: dict) -> str:
    """Markdown: held-out clean NLL per epoch, and tau / r_theta by row kind after the last epoch."""
    runs = summary["runs"]
    epochs = max(len(r["epochs"]) for r in runs)
    head = (
        "| noise | method | "
        + " | ".join(f"NLL epoch {e}" for e in range(epochs))
        + " | best epoch | train s |"
    )
    lines = [head, "|" + "---|" * (epochs + 4)]
    for r in runs:
        nll = [e["heldout_nll"] for e in r["epochs"]]
        best = int(np.argmin(nll))
        cells = " | ".join(f"{x:.3f}" for x in nll)
        lines.append(f"| {r['noise']} | {r['method']} | {cells} | {best} | {r['train_seconds']:.0f} |")
    lines += ["", "| noise | method | epoch | tau clean | tau wrong_prompt | tau corrupted | r_theta clean | "
              "r_theta wrong_prompt | r_theta corrupted |", "|" + "---|" * 9]  # fmt: skip
    for r in runs:
        for e in r["epochs"]:
            if "tau" in e:
                tau, rt = e["tau"], e["r_theta"]
                lines.append(
                    f"| {r['noise']} | {r['method']} | {e['epoch']} | "
                    + " | ".join(f"{tau.get(k, float('nan')):.3f}" for k in KINDS)
                    + " | "
                    + " | ".join(f"{rt.get(k, float('nan')):.3f}" for k in KINDS)
                    + " |"
                )
    refs = {k: v for r in runs for k, v in r["ref_score_by_kind"].items()}
    lines += ["", "mean r_ref by kind: " + ", ".join(f"{k} {v:.3f}" for k, v in refs.items())]
    return "\n".join(lines) + "\n"


def answers_table(summary: dict, prompts: list[str]) -> str:
    lines = []
    n = len(summary["runs"][0]["answers"])
    for i in range(n):
        lines += [f"### Prompt {i + 1}: {prompts[i]!r}", ""]
        for r in summary["runs"]:
            lines.append(f"- noise {r['noise']}, {r['method']}: {r['answers'][i]!r}")
        lines.append("")
    return "\n".join(lines)


def plot_study(summary: dict, path: Path) -> None:
    """Three panels: held-out clean NLL per epoch (from epoch 1; the base's value in the title), and on the
    noisy runs' training rows r_theta and PoFT's weight tau by row kind (r_ref dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = {"sft": "-", "poft": "--"}
    colors = dict(zip(KINDS, ("tab:green", "tab:orange", "tab:red"), strict=True))
    for r in summary["runs"]:
        trained = [e for e in r["epochs"] if e["epoch"] > 0]
        left.plot([e["epoch"] for e in trained], [e["heldout_nll"] for e in trained], styles.get(r["method"], ":"),
                  marker="o", label=f"{r['method']}, noise {r['noise']}")  # fmt: skip
        for kind, color in colors.items():
            pts = [
                (e["epoch"], e["tau"][kind], e["r_theta"][kind])
                for e in r["epochs"]
                if kind in e.get("tau", {})
            ]
            if pts:
                xs, taus, thetas = zip(*pts, strict=True)
                label = f"{r['method']}: {kind}"
                middle.plot(xs, thetas, styles.get(r["method"], ":"), color=color, marker="o", label=label)
                right.plot(xs, taus, styles.get(r["method"], ":"), color=color, marker="o", label=label)
    refs = {k: v for r in summary["runs"] if r["noise"] > 0 for k, v in r["ref_score_by_kind"].items()}
    for kind, value in refs.items():
        middle.axhline(value, color=colors[kind], linestyle=":", linewidth=1)
    base = summary["runs"][0]["epochs"][0]["heldout_nll"]
    left.set(
        xlabel="epoch",
        ylabel="held-out clean NLL (nats/token)",
        title=f"held-out clean NLL (base: {base:.2f})",
    )
    middle.set(
        xlabel="epoch",
        ylabel="r_theta (mean log-prob)",
        title="target's r_theta on noisy runs' rows (r_ref dotted)",
    )
    right.set(xlabel="epoch", ylabel="tau = sigmoid(r_ref - r_theta)", title="PoFT weight by row kind")
    for ax, size in ((left, 8), (middle, 7), (right, 7)):
        ax.legend(fontsize=size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """`python -m experiments.real_study [--config study.yaml] [--key value ...]`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return run_main(PROG, RealStudyConfig, run_study, argv, interrupted, description=__doc__.split("\n")[0])


def interrupted(config: RealStudyConfig) -> str:
    return (
        f"interrupted; the scores and the finished runs in {config.output} are kept: the same command resumes "
        "from them"
    )


if __name__ == "__main__":
    raise SystemExit(main())
