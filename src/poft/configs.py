"""Every command's own options, one dataclass each, with their help text written once.

poft's parser (`poft.options`, TrlParser's conventions) reads them: every command takes `--config
options.yaml` plus command-line overrides, and both `--max-length` and `--max_length` spellings.
`poft train` and `poft dpo` add TRL's and transformers' options: `PoFTArguments` / `PoFTDPOArguments` here
are poft's part of them, and `poft.training_configs` joins them to TRL's SFTConfig / DPOConfig.

This module imports nothing heavy (no torch, transformers, TRL or datasets): `poft <command> --help` reads
it, and the tuples of choices below are the one place they are typed.
"""

import argparse
import math
from dataclasses import dataclass, field

from .templates import TEMPLATE_NAMES

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")  # input formats the readers know
NORMALIZATIONS = ("token", "byte", "none")  # how a response's log-prob sum becomes a score
DTYPES = ("auto", "float32", "bfloat16", "float16")  # "auto": bf16 on GPU and bf16-capable CPUs, else fp32
ON_BAD_ROW = ("error", "skip")
OBJECTIVES = ("poft", "bi_poft", "sft", "poft_fixed_tau")  # the training objective (PoFTArguments.objective)
SFT_PATHS = ("trl", "chunked")  # where objective 'sft' computes its token loss (PoFTArguments.sft_path)
TRL_LOSS_TYPES = ("nll", "dft", "chunked_nll")  # SFTConfig.loss_type ('chunked_nll': TRL's deprecated 'nll')
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: the bound for scores, beta and gamma
BI_POFT_VARIANTS = ("signed", "soft", "margin")  # bi-PoFT's loss on undesirable rows (loss.bi_poft_loss)


def check_choices(config: object, choices: dict[str, tuple]) -> None:
    """For configs made in Python (the parser checks the command line): each named field is one of its choices."""
    for name, allowed in choices.items():
        value = getattr(config, name)
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class Interval:
    """The allowed values of a numeric option: finite, from `low` to `high` (each bound open or closed)."""

    low: float
    high: float
    open_low: bool = False
    open_high: bool = False

    def holds(self, value: float) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        return above and (value < self.high if self.open_high else value <= self.high)

    def describe(self) -> str:
        if self.high == FLOAT32_MAX:
            floor = "" if self.low == -FLOAT32_MAX else f", {'>' if self.open_low else '>='} {self.low:g}"
            return f"a finite number within float32 range{floor}"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"a finite number in {left}{self.low:g}, {self.high:g}{right}"


ANY_FLOAT32 = Interval(-FLOAT32_MAX, FLOAT32_MAX)
POSITIVE = Interval(0.0, FLOAT32_MAX, open_low=True)
NON_NEGATIVE = Interval(0.0, FLOAT32_MAX)
# TrainingArguments' numbers that train and dpo share: NaN, inf or a negative value here trains nothing sound
TRAINING_RANGES = {
    "learning_rate": NON_NEGATIVE,
    "num_train_epochs": NON_NEGATIVE,
    "warmup_steps": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "adam_beta1": Interval(0.0, 1.0, open_high=True),
    "adam_beta2": Interval(0.0, 1.0, open_high=True),
    "adam_epsilon": NON_NEGATIVE,
    "max_grad_norm": NON_NEGATIVE,
}
POFT_RANGES = {
    "beta": POSITIVE,
    "gamma": ANY_FLOAT32,
    "undesirable_target": Interval(0.0, 0.5, open_low=True),
    "undesirable_margin": NON_NEGATIVE,
    "undesirable_weight": NON_NEGATIVE,
}
DPO_RANGES = {"beta": POSITIVE, "label_smoothing": Interval(0.0, 0.5, open_high=True)}  # TRL's robust DPO


def check_ranges(config: object, ranges: dict[str, Interval]) -> None:
    """Each named number is finite and in its interval (None: unset, allowed): checked when the options are
    read, before any model or data is loaded, so that `--undesirable_weight inf` stops with one line naming it
    instead of an infinite loss later."""
    for name, interval in ranges.items():
        value = getattr(config, name)
        if value is not None and not interval.holds(value):
            raise ValueError(f"{name} must be {interval.describe()}, got {value!r}")


class ExtendOnce(argparse.Action):
    """A list option that may be repeated: `--model A --model B=path` and `--model A B=path` both give [A, B].

    The first use on the command line replaces the default (or the YAML value); later uses add to it.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest)
        setattr(namespace, self.dest, [*([] if current is self.default else current), *values])


@dataclass
class DatasetFormatArguments:
    """`poft train` only: how the training file's rows are read (see poft.readers)."""

    dataset_format: str | None = field(
        default=None,
        metadata={
            "help": "Force the dataset format instead of detecting it from the columns.",
            "choices": FORMATS,
        },
    )


@dataclass
class ScoreConfig:
    """`poft score`: score every example with every aligned model (resumable; torchrun to scale out)."""

    dataset: str = field(
        metadata={
            "help": "JSON/JSONL/Parquet/CSV file, save_to_disk folder or Hub id (in Python, with "
            "`score_dataset(config, dataset=rows)`, only the name of the rows in messages)."
        }
    )
    model: list[str] = field(
        metadata={
            "help": "Aligned model PATH_OR_HUB_ID or ALIAS=PATH_OR_HUB_ID; repeat --model or list several.",
            "action": ExtendOnce,
        }
    )
    output: str = field(
        metadata={"help": "Output folder (save_to_disk + manifest.json); re-running resumes."}
    )
    chat_template: list[str] | None = field(
        default=None,
        metadata={
            "help": "A chat template for a model saved without one (or with the wrong one): ALIAS=NAME_OR_FILE, "
            f"or NAME_OR_FILE with one model; NAME is a template shipped with poft: {', '.join(TEMPLATE_NAMES)}.",
            "action": ExtendOnce,
        },
    )
    split: str = field(default="train", metadata={"help": "Split of a Hub dataset or DatasetDict folder."})
    max_length: int | None = field(
        default=None, metadata={"help": "Truncate longer conversations to this many tokens (counted)."}
    )
    batch_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Most tokens per packed batch (rows run packed, no padding); does not change fp32 scores. "
            "Unset: chosen for the device and dtype (CPU 8192; GPU 16384, 32768 in bf16/fp16). A small run "
            "is cut finer, at most 1/20 of its tokens per batch (not under 512), so that progress moves."
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Model dtype ('auto': bfloat16 on a GPU or a CPU with bf16 instructions (AMX / AVX512-BF16), "
            "float32 elsewhere; bf16 scores depend slightly on batch composition, which the run then records).",
            "choices": DTYPES,
        },
    )
    normalization: str = field(
        default="token",
        metadata={
            "help": "How ref_score normalises each model's log-prob sum: per token (the paper), per UTF-8 "
            "byte of the responses, or none (the sum).",
            "choices": NORMALIZATIONS,
        },
    )
    on_bad_row: str = field(
        default="error",
        metadata={
            "help": "A malformed row: 'error' stops naming it, 'skip' leaves it out and records it.",
            "choices": ON_BAD_ROW,
        },
    )
    format: str | None = field(
        default=None,
        metadata={
            "help": "Force the input format instead of detecting it from the columns.",
            "choices": FORMATS,
        },
    )
    rows_per_shard: int = field(
        default=2048,
        metadata={"help": "Rows per resumable shard file (at most this much work lost to a kill)."},
    )
    flush_seconds: float = field(
        default=60.0, metadata={"help": "Write a partial shard at least this often (seconds)."}
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar (--no-progress: none)."})
    uncond: bool = field(
        default=False,
        metadata={
            "help": "Also score each response without its prompt (system messages removed, user turns "
            "emptied; docs/scoring.md), under each model's own template: adds <alias>_uncond_logp_sum, "
            "<alias>_uncond_n_tokens, ref_pmi, ref_ifd and ref_combined, the detector of answers to the "
            "wrong prompt. Doubles the scoring cost."
        },
    )

    def __post_init__(self):
        check_choices(self, {"dtype": DTYPES, "normalization": NORMALIZATIONS, "on_bad_row": ON_BAD_ROW})
        if self.format is not None:
            check_choices(self, {"format": FORMATS})
        for name in ("max_length", "batch_tokens", "rows_per_shard"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be a positive number of tokens/rows, got {value}"
                )
        if not self.flush_seconds > 0:
            raise ValueError(f"--flush-seconds must be > 0, got {self.flush_seconds}")


@dataclass
class InspectConfig:
    """`poft inspect DIR`: audit a `poft score` folder: statistics, correlations, figures, extreme rows."""

    dir: str | None = field(
        default=None,
        metadata={"help": "Folder written by `poft score`; or as a bare word: poft inspect DIR."},
    )
    output: str | None = field(
        default=None, metadata={"help": "Where to write figures and summary (unset: DIR/inspect)."}
    )
    k: int = field(
        default=5, metadata={"help": "How many lowest and highest rows to print.", "aliases": ["-k"]}
    )
    by_label: str | None = field(
        default=None,
        metadata={
            "help": "A column of row labels (e.g. known noise): per-label histograms and each score's ROC AUC "
            "for telling each label from the other rows."
        },
    )
    weights: str | None = field(
        default=None,
        metadata={
            "help": "After `poft train`: its output folder (the last epoch's row_weights/epoch-N.jsonl) or one "
            "such file. Adds each row's weight tau beside the scores, joined on id: tau's mean and quantiles "
            "per label (--by-label, else the rows' `label`), the -k rows with the lowest tau, weights.png."
        },
    )

    def __post_init__(self):
        if not self.dir:
            raise ValueError("the folder to inspect is required: poft inspect DIR")


@dataclass
class FilterConfig:
    """`poft filter DIR (--keep-top F | --min-score X) --output OUT`: keep the best rows by a score."""

    output: str = field(metadata={"help": "Output folder (save_to_disk), readable by `poft train`."})
    dir: str | None = field(
        default=None,
        metadata={
            "help": "A `poft score` folder, or any dataset with a numeric score column; or as a bare word: "
            "poft filter DIR."
        },
    )
    keep_top: float | None = field(
        default=None, metadata={"help": "Fraction of the scored rows to keep, e.g. 0.4."}
    )
    min_score: float | None = field(default=None, metadata={"help": "Keep the rows whose score is >= this."})
    by: str = field(default="ref_score", metadata={"help": "Numeric column to rank by (IFD, Deita, ...)."})
    split: str = field(default="train", metadata={"help": "Split of a Hub dataset or DatasetDict folder."})
    format: str | None = field(
        default=None,
        metadata={
            "help": "Force the input format instead of detecting it from the columns.",
            "choices": FORMATS,
        },
    )
    on_bad_row: str = field(
        default="error",
        metadata={
            "help": "A row that cannot be read: 'error' stops naming it, 'skip' leaves it out of the output.",
            "choices": ON_BAD_ROW,
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Replace a non-empty --output, once the filtered rows are written in full."},
    )

    def __post_init__(self):
        if not self.dir:
            raise ValueError("the folder to filter is required: poft filter DIR")
        if (self.keep_top is None) == (self.min_score is None):
            raise ValueError("give exactly one of --keep-top F and --min-score X")


@dataclass
class EvalConfig:
    """`poft eval --model DIR [--tasks ...]`: lm-evaluation-harness benchmarks, results.json and a table."""

    model: str = field(metadata={"help": "Model folder or Hub id."})
    tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "Tasks as NAME or NAME:SHOTS, space or comma separated (default: the Open LLM "
            "Leaderboard v1 six).",
            "action": ExtendOnce,
        },
    )
    num_fewshot: int | None = field(default=None, metadata={"help": "Shots for tasks given without ':N'."})
    include_path: str | None = field(
        default=None, metadata={"help": "Folder of local lm-eval task YAML files."}
    )
    output: str | None = field(
        default=None, metadata={"help": "Folder for results.json (unset: MODEL/eval)."}
    )
    batch_size: str = field(default="8", metadata={"help": "lm-eval batch size (a number or 'auto')."})
    device: str | None = field(
        default=None, metadata={"help": "cuda, cuda:0, cpu (default: cuda if available)."}
    )
    dtype: str = field(default="auto", metadata={"help": "Model dtype.", "choices": DTYPES})
    limit: float | None = field(
        default=None, metadata={"help": "At most this many examples per task (a fraction if below 1)."}
    )
    apply_chat_template: bool = field(
        default=False, metadata={"help": "Wrap the prompts in the model's chat template."}
    )


@dataclass
class TinyExampleConfig:
    """`poft tiny-example --output DIR`: a tiny model and a small scored dataset for trying `poft train`."""

    output: str = field(metadata={"help": "Folder to write model/ and train.jsonl into."})
    rows: int = field(default=256, metadata={"help": "Number of training rows."})
    seed: int = field(default=0, metadata={"help": "Random seed."})


@dataclass
class PoFTArguments:
    """`poft train`: poft's own options. `poft.training_configs.PoFTConfig` adds them to TRL's SFTConfig (every
    SFTConfig / TrainingArguments field keeps its meaning); they are listed first by `poft train --help`."""

    objective: str = field(
        default="poft",
        metadata={
            "help": "'poft': -logsigmoid(beta*(r_theta - r_ref) + gamma); 'bi_poft': the margin is multiplied "
            "by each row's direction (+1 desirable, -1 undesirable, from `direction_column`); 'sft': TRL's own "
            "token loss (`loss_type`: 'nll' cross-entropy, or 'dft') on the same response tokens: the baseline; "
            "'poft_fixed_tau': PoFT's gradient with each row's weight tau computed once, by the model as "
            "training starts, and held constant (a tau-weighted SFT; the ablation of PoFT's moving weight).",
            "choices": list(OBJECTIVES),
        },
    )
    sft_path: str = field(
        default="trl",
        metadata={
            "help": "objective='sft' only: 'trl' runs TRL's own loss (on CPU its fallback projects every "
            "position through the vocabulary); 'chunked' computes the same loss (`loss_type` 'nll' or 'dft', "
            "TRL's normalisation) on PoFT's path: the decoder once, the LM head on response positions only, "
            "in chunks, so SFT costs what PoFT costs. Same values and gradients; no entropy / token accuracy.",
            "choices": list(SFT_PATHS),
        },
    )
    beta: float = field(default=1.0, metadata={"help": "Scale of the score margin (paper: 1.0)."})
    gamma: float = field(default=0.0, metadata={"help": "Offset added to the scaled margin (paper: 0.0)."})
    ref_score_column: str = field(
        default="ref_score",
        metadata={
            "help": "Column with r_ref, the aligned models' mean normalised score (written by `poft score`)."
        },
    )
    scores_without_fingerprint: bool = field(
        default=False,
        metadata={
            "help": "Train on rows whose `fingerprint` is null or empty in a dataset that has one: their scores "
            "come from elsewhere, not from `poft score` of this text. Without it such rows are refused (named): "
            "their scores cannot be tied to the text they were made from."
        },
    )
    score_normalization: str = field(
        default="token",
        metadata={
            "help": "How r_theta normalises the response log-prob sum; must match the reference scores: 'token' "
            "(mean per token, the paper), 'byte' (per UTF-8 byte of the responses) or 'none' (the sum).",
            "choices": list(NORMALIZATIONS),
        },
    )
    chat_template_path: str | None = field(
        default=None,
        metadata={
            "help": "The target's chat template, for a base model that has none: a template shipped with "
            f"poft ({', '.join(TEMPLATE_NAMES)}), a .jinja file, or a tokenizer folder / Hub id to copy it from."
        },
    )
    loss_type: str = field(
        default="nll",
        metadata={
            "help": "TRL's token loss, used with objective='sft': 'nll' (cross-entropy) or 'dft' (Dynamic "
            "Fine-Tuning: each token's NLL times its detached probability). PoFT replaces the loss, so "
            "objective='poft'/'bi_poft' need 'nll'. Deprecated: 'poft', 'bi_poft', 'sft' here mean "
            "`objective`.",
            "choices": [*TRL_LOSS_TYPES, "poft", "bi_poft", "sft"],  # the last three: deprecated spellings
        },
    )
    on_bad_row: str = field(
        default="skip",
        metadata={
            "help": "Rows with no response token after truncation, a malformed conversation or a missing/NaN "
            "reference score: 'skip' drops them and prints how many and why; 'error' stops naming them.",
            "choices": list(ON_BAD_ROW),
        },
    )
    direction_column: str = field(
        default="label",
        metadata={"help": "bi-PoFT only: boolean column, true = desirable (+1), false = undesirable (-1)."},
    )
    bi_poft_variant: str = field(
        default="margin",
        metadata={
            "help": "bi-PoFT only: the loss on undesirable rows (m = beta*(r_theta - r_ref) + gamma). 'soft': "
            "Bradley-Terry with target P = `undesirable_target`, -[P logsig(m) + (1-P) logsig(-m)]: the push stops "
            "at m = logit(P) (bounded); 'margin': -logsig(-max(m, -undesirable_margin)): the push stops at "
            "m = -margin; 'signed': the original -logsig(-beta*(r_theta - r_ref) + gamma), which keeps pushing. "
            "Default 'margin': the best of the three on the demo's validation prompts (docs/method.md).",
            "choices": list(BI_POFT_VARIANTS),
        },
    )
    undesirable_target: float = field(
        default=0.1,
        metadata={
            "help": "bi-PoFT 'soft': target P in (0, 0.5]; undesirable rows settle logit(P)/beta below r_ref."
        },
    )
    undesirable_margin: float = field(
        default=2.0,
        metadata={"help": "bi-PoFT 'margin': undesirable rows stop being pushed once m <= -margin (>= 0)."},
    )
    undesirable_weight: float = field(
        default=1.0,
        metadata={
            "help": "bi-PoFT: weight of an undesirable row's loss relative to a desirable row's (>= 0)."
        },
    )

    @property
    def uses_scores(self) -> bool:
        """Whether training reads reference scores: PoFT and bi-PoFT do, 'sft' trains on the tokens alone."""
        return self.objective != "sft"

    def check_poft_options(self) -> None:
        """Refuse values that cannot train (a NaN beta would train a NaN model and still exit 0; an infinite
        undesirable_weight an infinite loss)."""
        check_choices(
            self,
            {"objective": OBJECTIVES, "score_normalization": NORMALIZATIONS, "on_bad_row": ON_BAD_ROW},
        )
        check_choices(self, {"sft_path": SFT_PATHS})
        check_choices(self, {"bi_poft_variant": BI_POFT_VARIANTS})
        if self.uses_scores and self.loss_type == "dft":
            raise ValueError(
                f"loss_type='dft' is a token loss and objective={self.objective!r} replaces the loss: use "
                "objective='sft' with loss_type='dft' for TRL's DFT baseline, or loss_type='nll' with PoFT"
            )
        check_ranges(self, POFT_RANGES)


@dataclass
class PoFTDPOArguments:
    """`poft dpo`: poft's own options, added to TRL's DPOConfig by `poft.training_configs.PoFTDPOConfig`."""

    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={
            "help": "Compute the reference (PoFT checkpoint) log-probs once before training instead of "
            "keeping a frozen copy of the model in memory."
        },
    )
    on_bad_row: str = field(
        default="skip",
        metadata={
            "help": "A preference pair the model's chat template cannot render with every message verbatim "
            "in order: 'skip' drops it and prints how many and why; 'error' stops naming it.",
            "choices": list(ON_BAD_ROW),
        },
    )


@dataclass
class MergeConfig:
    """`poft merge ADAPTER --output DIR`: a full model from a PEFT adapter folder and its base model."""

    output: str = field(
        metadata={
            "help": "Folder for the merged model: safetensors weights, config, tokenizer and chat template "
            "(the adapter folder's: the template `poft train --chat_template_path` gave is kept)."
        }
    )
    adapter: str | None = field(
        default=None,
        metadata={
            "help": "A PEFT adapter folder (what `poft train --use_peft` and `poft dpo --use_peft` write); or "
            "as a bare word: poft merge ADAPTER."
        },
    )
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "The base model's folder or Hub id (unset: base_model_name_or_path in the adapter's "
            "adapter_config.json)."
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype of the merged weights ('auto': the base model's saved dtype).",
            "choices": DTYPES,
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace a non-empty --output (only once the merged model is completely written); "
            "without it a non-empty --output is refused."
        },
    )

    def __post_init__(self):
        if not self.adapter:
            raise ValueError("the adapter folder is required: poft merge ADAPTER --output DIR")
        check_choices(self, {"dtype": DTYPES})
