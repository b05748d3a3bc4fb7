"""The noise study on real checkpoints: SFT, PoFT and the baselines people use, on a real base model, real
aligned models and real rows, with seeds, each method at its validated learning rate, per noise type.

    python -m experiments.real_study --output real_study          # from the repository root

What it runs (RESULTS.md "Real models"):
- rows: the 200 real Alpaca rows of data/alpaca_real.json (GPT-4 answers, CC BY-NC 4.0), split once with `seed`
  into `n_train` training rows, `n_heldout` held-out rows (the *reported* split: clean NLL after every epoch, the
  first `n_answers` prompts answered greedily at the end) and `n_validation` rows (the *validation* split: clean
  NLL after every epoch, used only to choose each method's learning rate);
- conditions: no noise, and for each level of `noise_levels` above 0 and each type of `noise_types`, that share
  of the training rows replaced by another training row's answer (`wrong_prompt`), by the row's answer with
  characters inserted, deleted or substituted (`corrupted`, each character with probability `char_rate`), or
  half of each (`mixed`), as `scripts/make_noisy_real_data.py` and the paper's noise study make them; the same
  rows are replaced for every type of a level;
- aligned models: the real instruct models of `scripts/fetch_real_models.py` (SmolLM2-135M-Instruct and
  Qwen2.5-Coder-0.5B-Instruct, each under its own tokenizer and chat template) score every distinct row once
  through `poft.scoring.score_dataset` (the code of `poft score`), with the prompt-free scores and
  `combined_column` where that scorer has them (`uncond`);
- methods (`METHODS`): `sft` and `dft` (TRL's token losses, on poft's chunked response-only path with
  `sft_path` chunked, so that they cost what PoFT costs), `poft`, `poft_fixed_tau` (PoFT's weight computed once
  by the initial model and held), `filter_ref` and `filter_combined` (SFT on the `filter_keep` share of the
  training rows that score highest by `ref_score` / by `combined_column`; skipped, and said, when the scored
  rows lack that column);
- target: the real *base* model gemma-3-270m with a Gemma chat template, trained by `PoFTTrainer` (the code of
  `poft train`) from the same start, LoRA on every linear layer by default (full fine-tuning with
  `--full_finetune`), bf16 autocast where the hardware has it;
- learning rates: each method, in each condition, trains at every rate of `learning_rate` x `lr_factors` with
  the first seed; the rate whose validation NLL after the last epoch is lowest is that method's rate, and the
  other `seeds` train at it (the split and the noise are the same for every seed: the seed changes the
  adapter's initialisation and the data order);
- measured after every epoch: the mean per-token NLL of the held-out clean answers (and of the validation
  ones), and on the training rows of noisy runs the target's mean log-prob r_theta and PoFT's weight
  tau = sigmoid(r_ref - r_theta) by row kind (clean / wrong_prompt / corrupted); at the end the greedy answers;
  per run its wall time, CPU time (this process, all threads) and the machine's load.

Every run's result is written as soon as it finishes (`runs/<condition>_<method>_lr<rate>_s<seed>.json`); a
rerun skips finished runs and resumes scoring, so a killed study loses at most the run in progress, and the
study can be run across sessions. The plan (runs to go, and an estimate of their time from the finished
runs) is printed at the start. `table.md` (mean +- std over seeds, per-seed signs against SFT), `runs.md`,
`answers.md`, `curves.png` and `results.json` are rewritten from the finished runs at the end.

The checkpoints are 4-bit GGUF copies converted to float32 (their log-probs are close to, not equal to, the
original models'). Fetch them first: `python scripts/fetch_real_models.py` (cache: $POFT_REAL_MODELS or
~/.cache/poft/real-models).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .entry import run_main

PROG = "python -m experiments.real_study"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROWS = ROOT / "data" / "alpaca_real.json"
KINDS = ("clean", "wrong_prompt", "corrupted")
NOISE_TYPES = ("wrong_prompt", "corrupted", "mixed")
# method -> (PoFTTrainer objective, TRL loss_type, column the training rows are filtered by or None)
METHODS = {
    "sft": ("sft", "nll", None),
    "poft": ("poft", "nll", None),
    "dft": ("sft", "dft", None),
    "poft_fixed_tau": ("poft_fixed_tau", "nll", None),
    "filter_ref": ("sft", "nll", "ref_score"),
    "filter_combined": ("sft", "nll", "combined"),  # the column named by --combined_column
}


def default_models_dir() -> str:
    cache = os.environ.get("POFT_REAL_MODELS") or str(Path.home() / ".cache" / "poft" / "real-models")
    return str(Path(cache) / "hf")


@dataclass
class RealStudyConfig:
    """Settings of the real-model study; the defaults are the study RESULTS.md reports (sized for about 3 hours
    of 2 CPU cores)."""

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
    seed: int = field(default=0, metadata={"help": "seed of the split and the noise"})
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "training seeds (adapter init, data order); the first one also chooses the rates"},
    )
    n_train: int = field(default=24, metadata={"help": "training rows (clean + noisy)"})
    n_heldout: int = field(default=16, metadata={"help": "held-out clean rows: the reported NLL per epoch"})
    n_validation: int = field(
        default=12, metadata={"help": "validation clean rows: NLL after the last epoch, chooses each rate"}
    )
    n_answers: int = field(default=3, metadata={"help": "held-out prompts answered greedily at the end"})
    noise_levels: list[float] = field(
        default_factory=lambda: [0.0, 0.3], metadata={"help": "shares of noisy rows"}
    )
    noise_types: list[str] = field(
        default_factory=lambda: ["wrong_prompt", "corrupted"],
        metadata={
            "help": f"noise of each level above 0, each type its own condition: {', '.join(NOISE_TYPES)}"
        },
    )
    methods: list[str] = field(
        default_factory=lambda: list(METHODS), metadata={"help": f"methods compared: {', '.join(METHODS)}"}
    )
    char_rate: float = field(default=0.1, metadata={"help": "per-character edit probability (corrupted)"})
    epochs: int = field(default=2, metadata={"help": "training epochs (evaluated after each)"})
    learning_rate: float = field(default=5e-4, metadata={"help": "base learning rate (cosine, 5 %% warm-up)"})
    lr_factors: list[float] = field(
        default_factory=lambda: [1.0, 3.0],
        metadata={"help": "rates tried per method: learning_rate times each; the validation split chooses"},
    )
    filter_keep: float = field(
        default=0.7, metadata={"help": "filter_* methods: share of the training rows kept (highest scores)"}
    )
    combined_column: str = field(
        default="ref_combined",
        metadata={"help": "score column of filter_combined (written by `poft score --uncond`)"},
    )
    uncond: bool = field(
        default=True,
        metadata={"help": "score the rows without their prompts too (the combined column), where poft can"},
    )
    sft_path: str = field(
        default="chunked",
        metadata={"help": "sft / dft / filter_*: 'chunked' (PoFT's path and cost) or 'trl' (TRL's own loss)"},
    )
    batch_size: int = field(default=8, metadata={"help": "rows per optimizer step"})
    max_length: int = field(default=256, metadata={"help": "tokens per training row at most"})
    full_finetune: bool = field(default=False, metadata={"help": "train every weight instead of LoRA"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (all linear layers)"})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto (bf16 autocast where supported)", "choices": ("auto", "float32", "bfloat16")},
    )
    max_new_tokens: int = field(default=32, metadata={"help": "length of the greedy answers"})

    def __post_init__(self):
        if not all(0 <= x < 1 for x in self.noise_levels):
            raise ValueError(f"--noise_levels must be shares in [0, 1), got {self.noise_levels}")
        for name in ("n_train", "n_heldout", "n_validation", "epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0 or not all(f > 0 for f in self.lr_factors) or not self.lr_factors:
            raise ValueError(
                f"--learning_rate and --lr_factors must be > 0, got {self.learning_rate}, {self.lr_factors}"
            )
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")
        if not 0 < self.filter_keep <= 1:
            raise ValueError(f"--filter_keep must be a share in (0, 1], got {self.filter_keep}")
        for name, values, allowed in (
            ("noise_types", self.noise_types, NOISE_TYPES),
            ("methods", self.methods, METHODS),
        ):
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise ValueError(f"--{name}: unknown {', '.join(unknown)} (known: {', '.join(allowed)})")
        if self.sft_path not in ("chunked", "trl"):
            raise ValueError(f"--sft_path must be chunked or trl, got {self.sft_path!r}")

    @property
    def learning_rates(self) -> list[float]:
        return sorted({float(f"{self.learning_rate * f:.6g}") for f in self.lr_factors})

    @property
    def conditions(self) -> list[tuple[str, float]]:
        """(noise type, share) of each condition: ("none", 0.0) first when 0 is a level, then each level x type."""
        clean = [("none", 0.0)] if 0.0 in self.noise_levels else []
        return clean + [
            (kind, level) for level in self.noise_levels if level > 0 for kind in self.noise_types
        ]

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


def validation_rows(rows: list[dict], config: RealStudyConfig) -> list[dict]:
    """The validation split: `n_validation` rows after the training and held-out rows in the seeded order,
    disjoint from both (they choose the learning rates; the held-out rows are reported)."""
    need = config.n_train + config.n_heldout + config.n_validation
    if len(rows) < need:
        raise ValueError(
            f"{config.rows}: {len(rows)} rows, the study needs {need} (n_train + n_heldout + n_validation)"
        )
    order = list(range(len(rows)))
    random.Random(config.seed).shuffle(order)  # the order split_rows draws
    return [rows[i] for i in order[config.n_train + config.n_heldout : need]]


def noisy_training_rows(
    train: list[dict], noise: float, config: RealStudyConfig, kind: str = "mixed"
) -> list[dict]:
    """`train` with a `noise` share replaced: by another row's answer (wrong_prompt), by the row's answer with
    characters edited (corrupted), or half of each in turn (mixed). The same rows are chosen for every kind.

    Rows keep their position; a noisy row gets the id `<id>~<kind>` (mixed) or `<id>~<kind>@<noise>` (one
    kind), so that it is a distinct row to score."""
    from .demo.noise import corrupt_chars

    rng = random.Random(f"{config.seed}-{noise}")
    chosen = sorted(rng.sample(range(len(train)), round(noise * len(train))))
    if kind == "mixed":
        kinds = {i: KINDS[1 + k % 2] for k, i in enumerate(chosen)}
    else:
        kinds = dict.fromkeys(chosen, kind)
    out = []
    for i, row in enumerate(train):
        row_kind, output = kinds.get(i, "clean"), row["output"]
        if row_kind == "wrong_prompt":
            output = train[rng.choice([j for j in range(len(train)) if train[j]["output"] != output])][
                "output"
            ]
        elif row_kind == "corrupted":
            output = corrupt_chars(output, rng, config.char_rate)
        row_id = row["id"] if row_kind == "clean" else f"{row['id']}~{row_kind}"
        if row_kind != "clean" and kind != "mixed":
            row_id += f"@{noise}"
        out.append({"id": row_id, "instruction": row["instruction"], "input": row.get("input", ""),
                    "output": output, "noise": row_kind, "label": row_kind == "clean"})  # fmt: skip
    return out


def filtered_rows(level: list[dict], scores: dict[str, float], keep: float) -> list[dict]:
    """The `keep` share of a condition's training rows with the highest score (at least one; ties keep the
    earlier row), in their original order: what `poft filter --by <column> --keep_top` keeps."""
    n = max(1, round(keep * len(level)))
    order = sorted(range(len(level)), key=lambda i: (-scores[level[i]["id"]], i))
    kept = set(order[:n])
    return [row for i, row in enumerate(level) if i in kept]


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
    """What is measured after each epoch: held-out (and validation) clean NLL, and r_theta / tau on the
    training rows by kind."""

    heldout: list[list[dict]]
    train: list[list[dict]]
    kinds: list[str]
    ref: np.ndarray
    validation: list[list[dict]] = field(default_factory=list)

    def measure(self, model, chat, config: RealStudyConfig, autocast: bool, validate: bool = False) -> dict:
        """`validate`: the validation NLL too (after the last epoch only: it chooses the rate)."""
        nll = -response_logprobs(model, chat, self.heldout, config.max_length, autocast)
        result = {"heldout_nll": float(nll.mean())}
        if validate and self.validation:
            val = -response_logprobs(model, chat, self.validation, config.max_length, autocast)
            result["validation_nll"] = float(val.mean())
        if self.train:
            r_theta = response_logprobs(model, chat, self.train, config.max_length, autocast)
            result["r_theta"] = by_kind(r_theta, self.kinds)
            result["tau"] = by_kind(sigmoid(self.ref - r_theta), self.kinds)
        return result


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid."""

    noise_type: str  # "none", "wrong_prompt", "corrupted" or "mixed"
    noise: float
    method: str
    learning_rate: float
    seed: int

    @property
    def condition(self) -> str:
        return "none" if self.noise == 0 else f"{self.noise_type}{self.noise}"

    @property
    def key(self) -> str:
        return f"{self.condition}_{self.method}_lr{self.learning_rate:g}_s{self.seed}"


def training_args(spec: RunSpec, config: RealStudyConfig, work: Path, autocast: bool):
    from poft.device import has_gpu
    from poft.training_configs import PoFTConfig

    objective, loss_type, _ = METHODS[spec.method]
    return PoFTConfig(
        output_dir=str(work), objective=objective, loss_type=loss_type, sft_path=config.sft_path, beta=1.0,
        gamma=0.0, learning_rate=spec.learning_rate, lr_scheduler_type="cosine", warmup_steps=0.05,
        weight_decay=0.0, num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size,
        max_length=config.max_length, seed=spec.seed, data_seed=spec.seed, chat_template_path=config.chat_template,
        bf16=autocast, use_cpu=not has_gpu(), gradient_checkpointing=False, save_strategy="no", logging_steps=1,
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, model_init_kwargs={"dtype": "float32"},
    )  # fmt: skip


def train_one(spec: RunSpec, data, probe: Probe, config: RealStudyConfig, bar, autocast: bool) -> dict:
    """Train the target with `spec` on `data` (a scored Dataset); evaluate after every epoch; time it."""
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from poft.chat import ChatFormat
    from poft.trainer import PoFTTrainer

    peft = None
    if not config.full_finetune:
        from peft import LoraConfig

        peft = LoraConfig(r=config.lora_r, lora_alpha=2 * config.lora_r, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
    cost = Cost.start()
    args = training_args(spec, config, Path(config.output) / "work" / spec.key, autocast)
    tokenizer = AutoTokenizer.from_pretrained(config.target)
    trainer = PoFTTrainer(model=str(config.target), args=args, train_dataset=data, peft_config=peft,
                          processing_class=tokenizer)  # fmt: skip
    chat = ChatFormat.from_tokenizer(trainer.processing_class, "gemma-3-270m")
    epochs: list[dict] = []

    class Each(TrainerCallback):
        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            last = round(state.epoch) == config.epochs
            epochs.append({"epoch": round(state.epoch), **probe.measure(model, chat, config, autocast, last)})
            bar.set_postfix_str(f"{spec.key} epoch {round(state.epoch)}: NLL {epochs[-1]['heldout_nll']:.3f}")

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Each())
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    weights = [e["poft/weight"] for e in trainer.state.log_history if "poft/weight" in e]
    answers = greedy_answers(trainer.model, trainer.processing_class, probe_prompts(probe, config),
                             config.max_new_tokens, autocast)  # fmt: skip
    return {
        "method": spec.method, "noise": spec.noise, "noise_type": spec.noise_type, "seed": spec.seed,
        "learning_rate": spec.learning_rate, "n_train_rows": len(data), "epochs": epochs, "losses": losses,
        "mean_logged_weight_per_epoch": _per_epoch(weights, config.epochs), "answers": answers, **cost.stop(),
    }  # fmt: skip


@dataclass
class Cost:
    """Wall time, CPU time of this process (every thread, user + system) and the machine's 1-minute load."""

    wall: float
    cpu: float
    load: float

    @classmethod
    def start(cls) -> Cost:
        return cls(time.perf_counter(), _cpu_seconds(), os.getloadavg()[0])

    def stop(self) -> dict:
        wall = time.perf_counter() - self.wall
        cpu = _cpu_seconds() - self.cpu
        return {"train_seconds": wall, "cpu_seconds": cpu, "cores_used": cpu / max(wall, 1e-9),
                "load_start": self.load, "load_end": os.getloadavg()[0]}  # fmt: skip


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _per_epoch(values: list[float], epochs: int) -> list[float]:
    if not values:
        return []
    chunks = np.array_split(np.asarray(values), epochs)
    return [float(c.mean()) for c in chunks if len(c)]


def probe_prompts(probe: Probe, config: RealStudyConfig) -> list[list[dict]]:
    return [m[:1] for m in probe.heldout[: config.n_answers]]


def choose_rate(runs: list[dict]) -> float:
    """The learning rate whose run has the lowest validation NLL after the last epoch (ties: the lower rate)."""
    best = min(runs, key=lambda r: (r["epochs"][-1]["validation_nll"], r["learning_rate"]))
    return best["learning_rate"]


# ---- the study ---------------------------------------------------------------------------------------------


@dataclass
class Study:
    """What every run of a study shares: the folder, the scored rows, the conditions' rows and the splits."""

    config: RealStudyConfig
    out: Path
    scored: object  # datasets.Dataset of every distinct training row, with the aligned models' scores
    noisy: dict[tuple[str, float], list[dict]]
    heldout: list[list[dict]]
    validation: list[list[dict]]
    autocast: bool

    def column(self, method: str) -> str | None:
        column = METHODS[method][2]
        return self.config.combined_column if column == "combined" else column

    @functools.cached_property
    def usable_methods(self) -> list[str]:
        """The configured methods whose filter column the scored rows have (the others are said and skipped)."""
        usable = []
        for method in self.config.methods:
            column = self.column(method)
            if column is not None and column not in self.scored.column_names:
                print(f"real study: {method} skipped: the scored rows have no column {column!r}")
                continue
            usable.append(method)
        return usable

    def training_data(self, condition: tuple[str, float], method: str):
        level = self.noisy[condition]
        column = self.column(method)
        if column is not None:
            scores = dict(zip(self.scored["id"], self.scored[column], strict=True))
            level = filtered_rows(level, scores, self.config.filter_keep)
        by_id = {row_id: i for i, row_id in enumerate(self.scored["id"])}
        data = self.scored.select([by_id[r["id"]] for r in level])
        if list(data["id"]) != [r["id"] for r in level]:  # scores joined to the wrong row must never train
            raise RuntimeError(
                f"{self.out / 'scored'}: the scored rows do not match the study's rows; delete it"
            )
        return data

    def probe(self, condition: tuple[str, float]) -> Probe:
        """The condition's probe: all its noisy rows and as many clean ones (the whole level, not the filtered)."""
        level = self.noisy[condition]
        ref_of = dict(zip(self.scored["id"], self.scored["ref_score"], strict=True))
        kinds = [r["noise"] for r in level]
        rows = [i for i, k in enumerate(kinds) if k != "clean"]
        rows += [i for i, k in enumerate(kinds) if k == "clean"][: len(rows)]
        return Probe(self.heldout, [alpaca_messages(level[i]) for i in rows], [kinds[i] for i in rows],
                     np.array([ref_of[level[i]["id"]] for i in rows]), self.validation)  # fmt: skip


def run_study(config: RealStudyConfig) -> dict:
    started = time.perf_counter()
    study, score_seconds = prepare_study(config)
    plan = plan_runs(study)
    done = {spec: _load_json(study.out / "runs" / f"{spec.key}.json") for spec in plan}
    print(plan_note(config, plan, done, study))
    reported = run_grid(study, done)
    summary = {"config": dataclasses.asdict(config), "runs": reported,
               "all_runs": [r for r in done.values() if r is not None],
               "score_seconds_this_call": score_seconds, "wall_seconds_this_call": time.perf_counter() - started,
               "bf16_autocast": study.autocast}  # fmt: skip
    write_reports(study, summary)
    return summary


def prepare_study(config: RealStudyConfig) -> tuple[Study, float]:
    """Check the models and the settings, split and noise the rows, score every distinct row (resumable)."""
    import torch

    from poft.aligned import resolve_dtype
    from poft.device import has_gpu

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
    validation = validation_rows(rows, config)
    out = Path(config.output)
    refuse_other_settings(out, config)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    noisy = {c: noisy_training_rows(train, c[1], config, c[0]) for c in config.conditions}
    started = time.perf_counter()
    scored = score_rows(out, [r for level in noisy.values() for r in level], config, autocast)
    study = Study(config, out, scored, noisy, [alpaca_messages(r) for r in heldout],
                  [alpaca_messages(r) for r in validation], autocast)  # fmt: skip
    return study, time.perf_counter() - started


def score_rows(out: Path, rows: list[dict], config: RealStudyConfig, autocast: bool):
    """Every distinct row scored once by every aligned model, with the prompt-free scores where poft's
    scorer has them and `uncond` asks (resumes when killed)."""
    from poft.configs import ScoreConfig
    from poft.scoring import score_dataset

    distinct = {r["id"]: r for r in rows}
    union = out / "rows.jsonl"
    union.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in distinct.values()), encoding="utf-8"
    )
    options = {"uncond": True} if config.uncond and "uncond" in ScoreConfig.__dataclass_fields__ else {}
    dtype = "bfloat16" if autocast else "float32"
    return score_dataset(
        ScoreConfig(
            dataset=str(union), model=config.aligned, output=str(out / "scored"), dtype=dtype, **options
        )
    )


def plan_runs(study: Study) -> list[RunSpec]:
    """Every run the grid can need: each condition x method at every rate with the first seed, and with each
    other seed at every rate (only the chosen rate's are trained: `run_grid`)."""
    config = study.config
    return [
        RunSpec(kind, noise, method, rate, seed)
        for kind, noise in config.conditions
        for method in study.usable_methods
        for seed in config.seeds
        for rate in config.learning_rates
    ]


def run_grid(study: Study, done: dict[RunSpec, dict | None]) -> list[dict]:
    """Train what is not finished: per condition and method, every rate with the first seed, then the other
    seeds at the chosen rate. Returns the reported runs (the chosen rate's, every seed)."""
    from tqdm.auto import tqdm

    config = study.config
    n_todo = (
        len(config.conditions)
        * len(study.usable_methods)
        * (len(config.learning_rates) + len(config.seeds) - 1)
    )
    n_done = sum(r is not None for r in done.values())
    bar = tqdm(total=n_todo, initial=min(n_done, n_todo), unit="run", desc="real study", dynamic_ncols=True)
    reported = []
    for condition in config.conditions:
        probe = study.probe(condition)
        base = _measure_base_cached(study, condition, probe)
        for method in study.usable_methods:
            first = [RunSpec(*condition, method, rate, config.seeds[0]) for rate in config.learning_rates]
            selection = [_run_cached(study, spec, done, probe, base, bar) for spec in first]
            rate = choose_rate(selection)
            for seed in config.seeds:
                spec = RunSpec(*condition, method, rate, seed)
                result = _run_cached(study, spec, done, probe, base, bar)
                reported.append({**result, "chosen_from": {r["learning_rate"]: r["epochs"][-1]["validation_nll"]
                                                           for r in selection}})  # fmt: skip
    bar.close()
    return reported


def _run_cached(study: Study, spec: RunSpec, done: dict, probe: Probe, base: dict, bar) -> dict:
    if done.get(spec) is not None:
        return done[spec]
    condition = (spec.noise_type, spec.noise)
    result = train_one(
        spec, study.training_data(condition, spec.method), probe, study.config, bar, study.autocast
    )
    result["epochs"].insert(0, {"epoch": 0, **base})
    level = study.noisy[condition]
    ref_of = dict(zip(study.scored["id"], study.scored["ref_score"], strict=True))
    result["ref_score_by_kind"] = by_kind(
        np.array([ref_of[r["id"]] for r in level]), [r["noise"] for r in level]
    )
    done[spec] = result
    (study.out / "runs" / f"{spec.key}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    bar.update(1)
    return result


def _measure_base_cached(study: Study, condition: tuple[str, float], probe: Probe) -> dict:
    """Epoch 0: the base on this condition's probe rows and the clean splits, measured once."""
    name = "none" if condition[1] == 0 else f"{condition[0]}{condition[1]}"
    path = study.out / "runs" / f"base_{name}.json"
    base = _load_json(path)
    if base is None:
        base = _measure_base(probe, study.config, study.autocast)
        path.write_text(json.dumps(base, indent=1))
    return base


# Seconds of one run on the 2 shared cores of the machine the defaults were sized on (load ~4, the study getting
# ~0.8-1.1 of a core, bf16 autocast): per training row and epoch (forward + backward), per evaluated row (held-out,
# probe; validation once), and per run (loading, preparing, greedy answers). Measured on gemma-3-270m + LoRA,
# SFT (chunked) and PoFT alike: 32 rows x 3 epochs took 289-335 s.
SECONDS_PER_TRAIN_ROW, SECONDS_PER_EVAL_ROW, SECONDS_PER_RUN = 1.9, 0.6, 35.0


def estimate_run_seconds(config: RealStudyConfig, noise: float) -> float:
    """A run's wall time on the machine the defaults were sized on (`SECONDS_PER_*`), before any has run."""
    n_probe = 2 * round(noise * config.n_train)
    per_epoch = SECONDS_PER_TRAIN_ROW * config.n_train + SECONDS_PER_EVAL_ROW * (config.n_heldout + n_probe)
    return config.epochs * per_epoch + SECONDS_PER_EVAL_ROW * config.n_validation + SECONDS_PER_RUN


def plan_note(config: RealStudyConfig, plan: list[RunSpec], done: dict, study: Study) -> str:
    """What the grid trains and about how long what is left takes: from the finished runs' mean wall time, or
    before any has finished from `estimate_run_seconds`."""
    n_methods = len(study.usable_methods)
    per_cell = len(config.learning_rates) + len(config.seeds) - 1
    total = len(config.conditions) * n_methods * per_cell
    finished = [r for r in done.values() if r is not None]
    left = max(total - len(finished), 0)
    note = (f"real study: {len(config.conditions)} conditions x {n_methods} methods x ({len(config.learning_rates)} "
            f"rates + {len(config.seeds) - 1} more seeds) = {total} runs, {len(finished)} finished")  # fmt: skip
    if finished:
        mean = float(np.mean([r["train_seconds"] for r in finished]))
        return note + f"; {mean:.0f} s a run so far: about {left * mean / 3600:.1f} h to go"
    estimate = sum(estimate_run_seconds(config, noise) for _, noise in config.conditions) / len(
        config.conditions
    )
    return (
        note + f"; estimated {estimate:.0f} s a run on 2 shared cores: about {left * estimate / 3600:.1f} h"
    )


def write_reports(study: Study, summary: dict) -> None:
    out = study.out
    (out / "results.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    (out / "table.md").write_text(summary_table(summary["runs"]) + "\n" + selection_table(summary["runs"]))
    (out / "runs.md").write_text(results_table(summary))
    (out / "answers.md").write_text(answers_table(summary, [m[0]["content"] for m in study.heldout]))
    plot_study(summary, out / "curves.png")
    print((out / "table.md").read_text())
    print(f"poft: real study -> {out} (table.md, runs.md, answers.md, curves.png, results.json)")


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
    numbers would be reported as this configuration's). Settings that only add runs to the grid (seeds,
    rates, methods, noise levels and types) may change: a run's file name says what it was trained with."""
    path = out / "config.json"
    if not path.exists():
        return
    before = json.loads(path.read_text())
    now = json.loads(json.dumps(dataclasses.asdict(config)))  # as the file has them (JSON values)
    grid = {"output", "seeds", "lr_factors", "methods", "noise_levels", "noise_types"}
    changed = sorted(k for k in before.keys() | now.keys() if k not in grid and before.get(k) != now.get(k))
    if changed:
        raise ValueError(
            f"{out} holds a study made with other settings ({', '.join(changed)}); its finished runs would be "
            "reused: give another --output or delete the folder"
        )


def _load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


# ---- report ------------------------------------------------------------------------------------------------


def run_label(r: dict) -> tuple[str, str]:
    """(noise cell, method cell) of a run in the per-run tables: the type and the rate / seed where known."""
    noise = str(r["noise"])
    if r.get("noise_type") not in (None, "none", "mixed"):
        noise = f"{r['noise_type']} {r['noise']}"
    method = r["method"]
    if "seed" in r:
        method += f" lr {r['learning_rate']:g} s{r['seed']}"
    return noise, method


def results_table(summary: dict) -> str:
    """Markdown, one line per run: held-out clean NLL per epoch, and tau / r_theta by row kind per epoch."""
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
        noise, method = run_label(r)
        lines.append(f"| {noise} | {method} | {cells} | {best} | {r['train_seconds']:.0f} |")
    lines += ["", "| noise | method | epoch | tau clean | tau wrong_prompt | tau corrupted | r_theta clean | "
              "r_theta wrong_prompt | r_theta corrupted |", "|" + "---|" * 9]  # fmt: skip
    for r in runs:
        noise, method = run_label(r)
        for e in r["epochs"]:
            if "tau" in e:
                tau, rt = e["tau"], e["r_theta"]
                lines.append(
                    f"| {noise} | {method} | {e['epoch']} | "
                    + " | ".join(f"{tau.get(k, float('nan')):.3f}" for k in KINDS)
                    + " | "
                    + " | ".join(f"{rt.get(k, float('nan')):.3f}" for k in KINDS)
                    + " |"
                )
    refs = {k: v for r in runs for k, v in r["ref_score_by_kind"].items()}
    lines += ["", "mean r_ref by kind: " + ", ".join(f"{k} {v:.3f}" for k, v in refs.items())]
    return "\n".join(lines) + "\n"


def _cells(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The reported runs grouped by (condition, method), in order; each group's runs ordered by seed."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        condition = "none" if r["noise"] == 0 else f"{r.get('noise_type', 'mixed')} {r['noise']}"
        groups.setdefault((condition, r["method"]), []).append(r)
    return {key: sorted(group, key=lambda r: r.get("seed", 0)) for key, group in groups.items()}


def mean_std(values: list[float]) -> str:
    """'mean +- sample std' ('mean' alone for one value)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} +- {np.std(values, ddof=1):.3f}"


def summary_table(runs: list[dict]) -> str:
    """Markdown: per condition and method (at its chosen rate), held-out clean NLL per epoch as mean +- std over
    seeds, and the last epoch's difference from SFT of the same condition and seed: mean +- std and its sign
    per seed ('-': lower NLL than SFT, better)."""
    cells = _cells(runs)
    epochs = max(len(r["epochs"]) for r in runs)
    lines = ["| noise | method | rate | seeds | " + " | ".join(f"NLL epoch {e}" for e in range(epochs))
             + " | last - SFT | per-seed signs | run s (cores) |", "|" + "---|" * (epochs + 7)]  # fmt: skip
    for (condition, method), group in cells.items():
        nll = [[e["heldout_nll"] for e in r["epochs"]] for r in group]
        per_epoch = " | ".join(mean_std([x[e] for x in nll if len(x) > e]) for e in range(epochs))
        sft = {r.get("seed"): r["epochs"][-1]["heldout_nll"] for r in cells.get((condition, "sft"), [])}
        diffs = [r["epochs"][-1]["heldout_nll"] - sft[r.get("seed")] for r in group if r.get("seed") in sft]
        versus = mean_std(diffs) if diffs and method != "sft" else ""
        signs = "".join("-" if d < 0 else "+" if d > 0 else "0" for d in diffs) if method != "sft" else ""
        seconds = np.mean([r["train_seconds"] for r in group])
        cores = np.mean([r.get("cores_used", float("nan")) for r in group])
        rate = f"{group[0]['learning_rate']:g}" if "learning_rate" in group[0] else ""
        lines.append(f"| {condition} | {method} | {rate} | {len(group)} | {per_epoch} | {versus} | {signs} | "
                     f"{seconds:.0f} ({cores:.2f}) |")  # fmt: skip
    return "\n".join(lines) + "\n"


def selection_table(runs: list[dict]) -> str:
    """Markdown: the validation NLL after the last epoch of each rate tried (first seed), and the rate chosen."""
    lines = [
        "| noise | method | validation NLL by rate (first seed, last epoch) | chosen rate |",
        "|---|---|---|---|",
    ]
    for (condition, method), group in _cells(runs).items():
        tried = group[0].get("chosen_from")
        if not tried:
            continue
        by_rate = ", ".join(
            f"{float(rate):g}: {nll:.3f}" for rate, nll in sorted(tried.items(), key=lambda x: float(x[0]))
        )
        lines.append(f"| {condition} | {method} | {by_rate} | {group[0]['learning_rate']:g} |")
    return "\n".join(lines) + "\n"


def answers_table(summary: dict, prompts: list[str]) -> str:
    lines = []
    n = len(summary["runs"][0]["answers"])
    for i in range(n):
        lines += [f"### Prompt {i + 1}: {prompts[i]!r}", ""]
        for r in summary["runs"]:
            noise, method = run_label(r)
            lines.append(f"- noise {noise}, {method}: {r['answers'][i]!r}")
        lines.append("")
    return "\n".join(lines)


def plot_study(summary: dict, path: Path) -> None:
    """One panel per condition: held-out clean NLL per epoch of each method (mean over seeds, bars: std; the
    base's value in the title); a last panel: PoFT's weight tau by row kind on the noisy conditions' rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = _cells(summary["runs"])
    conditions = list(dict.fromkeys(condition for condition, _ in cells))
    fig, axes = plt.subplots(1, len(conditions) + 1, figsize=(5 * (len(conditions) + 1), 4.2), squeeze=False)
    colors = dict(zip(KINDS, ("tab:green", "tab:orange", "tab:red"), strict=True))
    for ax, condition in zip(axes[0], conditions, strict=False):
        for (cond, method), group in cells.items():
            if cond != condition:
                continue
            nll = np.array([[e["heldout_nll"] for e in r["epochs"][1:]] for r in group])
            xs = np.arange(1, nll.shape[1] + 1)
            std = nll.std(0, ddof=1) if len(group) > 1 else None
            ax.errorbar(
                xs, nll.mean(0), yerr=std, marker="o", capsize=3, label=f"{method} ({len(group)} seeds)"
            )
        base = next(r for (c, _), g in cells.items() if c == condition for r in g)["epochs"][0]["heldout_nll"]
        ax.set(
            xlabel="epoch", ylabel="held-out clean NLL (nats/token)", title=f"{condition} (base: {base:.2f})"
        )
        ax.legend(fontsize=7)
    right = axes[0][-1]
    for (condition, method), group in cells.items():
        if method != "poft":
            continue
        for kind, color in colors.items():
            pts = [
                [(e["epoch"], e["tau"][kind]) for e in r["epochs"] if kind in e.get("tau", {})] for r in group
            ]
            if pts and pts[0]:
                values = np.array([[t for _, t in run] for run in pts])
                style = "-" if "wrong" in condition else "--"
                right.plot([x for x, _ in pts[0]], values.mean(0), style, color=color, marker="o",
                           label=f"{condition}: {kind}")  # fmt: skip
    right.set(
        xlabel="epoch", ylabel="tau = sigmoid(r_ref - r_theta)", title="PoFT's weight by row kind (mean)"
    )
    right.legend(fontsize=7)
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
