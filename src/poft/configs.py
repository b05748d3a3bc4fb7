"""The options of `poft score`, `filter`, `inspect`, `eval` and `tiny-example`, one dataclass each.

Every field's help text is written once, here, and poft's parser (`poft.options`, TrlParser's conventions)
reads it: so every subcommand takes `--config options.yaml` plus command-line overrides, and both
`--max-length` and `--max_length` spellings. `poft train` and `poft dpo` use TRL's own config classes
(`PoFTConfig`, `PoFTDPOConfig`, `ModelConfig`, `ScriptArguments`) with TRL's parser.

This module imports nothing heavy (no torch, transformers, TRL or datasets): `poft <command> --help` reads
it, and the tuples of choices below are the one place they are typed.
"""

import argparse
from dataclasses import dataclass, field

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")  # input formats the readers know
NORMALIZATIONS = ("token", "byte", "none")  # how a response's log-prob sum becomes a score
DTYPES = ("auto", "float32", "bfloat16", "float16")  # "auto": bf16 on GPU and bf16-capable CPUs, else fp32
ON_BAD_ROW = ("error", "skip")


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

    dataset: str = field(metadata={"help": "JSON/JSONL/Parquet/CSV file, save_to_disk folder or Hub id."})
    model: list[str] = field(
        metadata={
            "help": "Aligned model PATH_OR_HUB_ID or ALIAS=PATH_OR_HUB_ID; repeat --model or list several.",
            "action": ExtendOnce,
        }
    )
    output: str = field(
        metadata={"help": "Output folder (save_to_disk + manifest.json); re-running resumes."}
    )
    split: str = field(default="train", metadata={"help": "Split of a Hub dataset or DatasetDict folder."})
    max_length: int | None = field(
        default=None, metadata={"help": "Truncate longer conversations to this many tokens (counted)."}
    )
    batch_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per packed batch (rows run packed, no padding); does not change fp32 scores. "
            "Unset: chosen for the device and dtype (CPU 8192; GPU 16384, 32768 in bf16/fp16)."
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

    def __post_init__(self):
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
