"""`poft <command>`: a table of subcommands, each parsed from its option dataclasses (train and dpo by TRL's
parser, the others by `poft.options`, which follows its conventions without importing TRL).

Every subcommand takes `--config options.yaml` plus `--key value` overrides (either `--max-length` or
`--max_length`); the options and their help live in `poft.configs` (train and dpo: TRL's config classes).
The library modules do the work, imported when a command runs, so `poft --help` and `poft <command> --help`
stay fast (~0.1 s; `poft train --help` and `poft dpo --help` need TRL's training configs: a few seconds),
and a command imports only what it uses (`poft inspect` / `poft filter` of a scored folder: no torch,
transformers or TRL; tests/unit/test_import_graph.py). On the CPU, score, train and dpo set torch's threads
from the CPUs the process may use (`device.fit_cpu_threads`).

How a command ends (`main`): a user error is one line on stderr, `poft <command>: error: ...`, exit 2 for
options that cannot be used (argparse's convention) and 1 for a failure (a missing file, a bad row, a model
without a chat template, ...); an error poft does not expect is one line too, marked internal. Ctrl-C says
what was kept and how to resume, exit 130. `poft --debug <command>` (or POFT_DEBUG=1) shows tracebacks and
the library warnings that are otherwise filtered (`quiet_libraries`).
"""

import argparse
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from . import __version__
from .configs import (
    DatasetFormatArguments,
    EvalConfig,
    FilterConfig,
    InspectConfig,
    ScoreConfig,
    TinyExampleConfig,
)


class UsageError(Exception):
    """Options that parse but cannot be run together: the command exits 2 with argparse's message."""


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # `name` or `org/name`


def check_model_path(option: str, path: str) -> None:
    """A model that is neither a local file or folder nor a Hub id is named as missing: transformers would say
    "Repo id must use alphanumeric chars" (`./missing`) or that it could not reach the Hub. A Hub id is left
    to transformers, unless the Hub is offline and the HF cache has no copy of it."""
    if Path(path).expanduser().exists():
        return
    if not HUB_ID.fullmatch(path) or path.lower().endswith(".gguf"):
        raise FileNotFoundError(f"{option} {path}: no such file or folder")
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(path, "config.json"), str):
        raise FileNotFoundError(
            f"{option} {path}: no such file or folder here, and no Hub model of that name in the HF cache "
            "(the Hub is offline: HF_HUB_OFFLINE=1)"
        )


def model_init_kwargs(config, model_args) -> dict:
    """How train and dpo load the model from a path: ModelConfig's settings, then the config's own kwargs."""
    return {
        "revision": model_args.model_revision,
        "trust_remote_code": config.trust_remote_code,  # a field of SFTConfig / DPOConfig in TRL 1.x
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(config.model_init_kwargs or {}),
    }


def run_train(script_args, config, model_args, format_args: DatasetFormatArguments) -> int:
    """`poft train --config recipe.yaml [--key value ...]`: PoFTTrainer on the rows of `--dataset_name`."""
    from trl import get_peft_config

    from .device import fit_cpu_threads
    from .readers import read_sft
    from .trainer import PoFTTrainer

    if not model_args.model_name_or_path:
        raise UsageError("--model_name_or_path is required (a local folder or a Hub id)")
    if not script_args.dataset_name:
        raise UsageError(
            "--dataset_name is required (a JSON/JSONL/Parquet/CSV file, a save_to_disk folder or a Hub id)"
        )
    check_model_path("--model_name_or_path", model_args.model_name_or_path)
    config.model_init_kwargs = model_init_kwargs(config, model_args)
    if config.use_cpu:  # set by PoFTConfig where there is no GPU
        fit_cpu_threads()

    def rows(split: str):  # read once; the trainer reports unreadable and untrainable rows together
        return read_sft(
            script_args.dataset_name, split, script_args.dataset_config, format=format_args.dataset_format,
            on_bad_row="skip", report=False,
        )  # fmt: skip

    train = rows(script_args.dataset_train_split)
    evaluation = rows(script_args.dataset_test_split) if config.eval_strategy != "no" else None
    trainer = PoFTTrainer(model=model_args.model_name_or_path, args=config, train_dataset=train,
                          eval_dataset=evaluation, peft_config=get_peft_config(model_args))  # fmt: skip
    trainer.accelerator.print(
        f"poft: objective={config.objective} beta={config.beta} gamma={config.gamma} "
        f"normalization={config.score_normalization}, {len(trainer.train_dataset)} training rows"
    )
    if len(trainer.train_dataset) == 0:  # torch would say "num_samples=0"
        raise ValueError(
            f"{script_args.dataset_name}: no row is left to train on (the lines above say why rows were "
            "dropped)"
        )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    trainer.accelerator.print(f"poft: model saved to {config.output_dir}")
    trainer.accelerator.free_memory()  # drop the DDP / DeepSpeed wrappers; main() then ends the process group
    return 0


def run_dpo(script_args, config, model_args) -> int:
    """`poft dpo --config recipe.yaml [--key value ...]`: TRL's DPOTrainer from a PoFT checkpoint."""
    from trl import get_peft_config

    from .device import fit_cpu_threads
    from .dpo import PoFTDPOTrainer, load_preferences

    if not model_args.model_name_or_path or not script_args.dataset_name:
        raise UsageError(
            "--model_name_or_path (the PoFT checkpoint) and --dataset_name (preference pairs) are required"
        )
    check_model_path("--model_name_or_path", model_args.model_name_or_path)
    config.model_init_kwargs = model_init_kwargs(config, model_args)
    if config.use_cpu:  # set by PoFTDPOConfig where there is no GPU
        fit_cpu_threads()

    def pairs(split: str):
        return load_preferences(script_args.dataset_name, split, script_args.dataset_config)

    train = pairs(script_args.dataset_train_split)
    evaluation = pairs(script_args.dataset_test_split) if config.eval_strategy != "no" else None
    trainer = PoFTDPOTrainer(model=model_args.model_name_or_path, args=config, train_dataset=train,
                             eval_dataset=evaluation, peft_config=get_peft_config(model_args))  # fmt: skip
    trainer.accelerator.print(
        f"poft: DPO from {model_args.model_name_or_path}: beta={config.beta} loss={config.loss_type}, "
        f"{len(trainer.train_dataset)} pairs, reference log-probs "
        + ("precomputed" if config.precompute_ref_log_probs else "computed on the fly")
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    trainer.save_state()  # trainer_state.json: the logged DPO losses and reward margins, for comparisons
    trainer.accelerator.print(f"poft: model saved to {config.output_dir}")
    trainer.accelerator.free_memory()
    return 0


def run_score(config: ScoreConfig) -> int:
    """`poft score --dataset D --model M1 [--model M2 ...] --output DIR`: aligned-model scores + ref_score."""
    import torch

    from .aligned import parse_model_spec
    from .device import fit_cpu_threads
    from .scoring import score_dataset

    for spec in config.model:
        check_model_path("--model", parse_model_spec(spec)[1])
    if not torch.cuda.is_available():  # scoring computes on the CPU (score_dataset's device)
        fit_cpu_threads()
    score_dataset(config.dataset, config.model, config.output, split=config.split,
                  max_length=config.max_length, batch_tokens=config.batch_tokens, dtype=config.dtype,
                  normalization=config.normalization, on_bad_row=config.on_bad_row, format=config.format,
                  progress=config.progress, rows_per_shard=config.rows_per_shard,
                  flush_seconds=config.flush_seconds)  # fmt: skip
    return 0


def run_inspect(config: InspectConfig) -> int:
    """`poft inspect DIR [--output OUT]`: score statistics, correlations, histograms, lowest/highest rows."""
    from .inspection import inspect_scores, summary_table

    summary = inspect_scores(config.dir, config.output, k=config.k, by_label=config.by_label)
    print(summary_table(summary))
    print("\n" + summary["extremes_text"])
    print(f"\npoft: wrote {len(summary['figures'])} figures, summary.json and extremes.txt to "
          f"{config.output or Path(config.dir) / 'inspect'}")  # fmt: skip
    return 0


def run_filter(config: FilterConfig) -> int:
    """`poft filter DIR (--keep-top F | --min-score X) [--by COLUMN] --output OUT`."""
    from .filtering import filter_dataset
    from .readers import load_sft_dataset

    if Path(config.output).resolve() == Path(config.dir).resolve():
        raise ValueError("--output must differ from the input")
    dataset = load_sft_dataset(config.dir, config.split, format=config.format)
    filter_dataset(dataset, config.output, by=config.by, keep_top=config.keep_top,
                   min_score=config.min_score, source=config.dir)  # fmt: skip
    return 0


def run_eval(config: EvalConfig) -> int:
    """`poft eval --model DIR [--tasks ...]`: lm-evaluation-harness; results.json and a printed table."""
    from .evaluation import evaluate_model, parse_tasks, results_table

    batch_size = int(config.batch_size) if config.batch_size.isdigit() else config.batch_size
    limit = int(config.limit) if config.limit is not None and config.limit >= 1 else config.limit
    output = config.output or str(Path(config.model) / "eval")
    tasks = parse_tasks(config.tasks, config.num_fewshot)
    check_model_path("--model", config.model)
    quiet_git_hash()
    report = evaluate_model(config.model, tasks, output, include_path=config.include_path,
                            batch_size=batch_size, device=config.device, dtype=config.dtype,
                            limit=limit, apply_chat_template=config.apply_chat_template)  # fmt: skip
    print(results_table(report))
    print(f"poft: results written to {Path(output) / 'results.json'}")
    return 0


def run_tiny_example(config: TinyExampleConfig) -> int:
    """`poft tiny-example --output DIR`: a tiny model and a small scored dataset for trying `poft train`."""
    from .example import write_tiny_example

    paths = write_tiny_example(config.output, n_rows=config.rows, seed=config.seed)
    print(f"poft: wrote {paths['model']} and {paths['data']}")
    return 0


def train_options() -> tuple[type, ...]:
    from trl import ModelConfig, ScriptArguments

    from .trainer import PoFTConfig

    return ScriptArguments, PoFTConfig, ModelConfig, DatasetFormatArguments


def dpo_options() -> tuple[type, ...]:
    from trl import ModelConfig, ScriptArguments

    from .dpo import PoFTDPOConfig

    return ScriptArguments, PoFTDPOConfig, ModelConfig


class Command(NamedTuple):
    help: str
    options: Callable[[], tuple[type, ...]]  # the option dataclasses, in the order `run` takes them
    run: Callable[..., int]
    positional: str | None = None  # an option that may also be given as a bare word: `poft inspect DIR`


# In the paper's order: train (or score -> inspect -> filter -> train) -> dpo -> eval.
COMMANDS = {
    "train": Command("train with PoFT / bi-PoFT / SFT (TRL's SFTConfig options plus PoFT's)",
                     train_options, run_train),
    "score": Command("score every example with every aligned model (resumable; torchrun to scale out)",
                     lambda: (ScoreConfig,), run_score),
    "inspect": Command("audit a `poft score` folder: statistics, figures, extreme rows",
                       lambda: (InspectConfig,), run_inspect, positional="dir"),
    "filter": Command("keep the best rows by ref_score (or any numeric column)",
                      lambda: (FilterConfig,), run_filter, positional="dir"),
    "dpo": Command("DPO from a PoFT checkpoint (TRL's DPOConfig options)", dpo_options, run_dpo),
    "eval": Command("lm-evaluation-harness benchmarks (default: Open LLM Leaderboard v1)",
                    lambda: (EvalConfig,), run_eval),
    "tiny-example": Command("write a tiny model and a small scored dataset (offline)",
                            lambda: (TinyExampleConfig,), run_tiny_example),
}  # fmt: skip


TRL_COMMANDS = ("train", "dpo")  # the commands whose options are TRL's config classes


def usage_exit(prog: str):
    """argparse's `error`, on one line: `poft score: error: ... (see `poft score --help`)`, exit 2. The usage
    block argparse prints first is left out: for `poft train` it is 160 lines of TRL's options."""

    def error(message: str):
        print(f"{prog}: error: {message} (see `{prog} --help`)", file=sys.stderr)
        sys.exit(2)

    return error


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser over the command's option dataclasses, plus `--config` (and the bare-word positional):
    TRL's for train and dpo (TRL's config classes), poft's own (`poft.options`, same conventions) for the
    others, which then never import TRL."""
    command = COMMANDS[name]
    if name in TRL_COMMANDS:
        from trl import TrlParser as Parser
    else:
        from .options import OptionParser as Parser
    parser = Parser(command.options(), prog=f"poft {name}", description=command.help)
    parser.error = usage_exit(parser.prog)
    # TrlParser reads --config itself before argparse sees the arguments: this entry is for --help only
    parser.add_argument("--config", default=argparse.SUPPRESS, metavar="YAML",
                        help="Options from a YAML file (keys are the option names); the command line overrides it.")  # fmt: skip
    if command.positional:
        parser.add_argument(command.positional, nargs="?", default=argparse.SUPPRESS,
                            metavar=command.positional.upper(), help=f"Same as --{command.positional}.")  # fmt: skip
    return parser


def top_parser() -> argparse.ArgumentParser:
    """`poft --help` (the table's one-line helps), `poft --version` and `poft --debug <command>`; the
    command's parser does the rest."""
    top = argparse.ArgumentParser(prog="poft", description="Preference-Oriented Supervised Fine-Tuning.",
                                  epilog="`poft <command> --help` lists a command's options.")  # fmt: skip
    top.error = usage_exit(top.prog)
    top.add_argument("--version", action="version", version=f"poft {__version__}")
    top.add_argument("--debug", action="store_true",
                     help="Show tracebacks and library warnings (also POFT_DEBUG=1); give it before the command.")  # fmt: skip
    sub = top.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
    return top


class Parsed(NamedTuple):
    name: str
    parser: argparse.ArgumentParser
    options: tuple  # one instance per dataclass of the command's `options()`


def parse_command(argv: list[str]) -> Parsed:
    """`["score", "--config", "s.yaml", "--max_length", "512"]` -> the options `run_score` would get.

    Exits like argparse: 0 after --help or --version, 2 on an unknown command or a usage error (a config
    dataclass refusing a combination of options included).
    """
    name = top_parser().parse_args(argv[:1]).command
    parser = command_parser(name)
    try:
        options = parser.parse_args_and_config(args=argv[1:])
    except (ValueError, OSError) as e:  # an unreadable --config, unknown keys in it, a refused combination
        parser.error(" ".join(str(e).split()))
    return Parsed(name, parser, options)


def not_deepspeed_cpu_fallback(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Setting accelerator to CPU")


def quiet_libraries() -> None:
    """Filter the warnings every run printed that a user can do nothing about, before the libraries load.
    Only these lines, by their text: poft's own warnings and every other library warning stay."""
    # DeepSpeed (imported by transformers / accelerate when installed) on any machine without a GPU
    logging.getLogger("DeepSpeed").addFilter(not_deepspeed_cpu_fallback)
    # TRL's configs default `gradient_checkpointing=True`: transformers' deprecated name for
    # `activation_checkpointing`, so every run warned (poft's recipes use the new name)
    warnings.filterwarnings("ignore", "`gradient_checkpointing` is deprecated", FutureWarning)
    # transformers asks the DataLoader to pin memory; torch warns when there is no GPU to pin it for
    warnings.filterwarnings("ignore", "'pin_memory' argument is set as true but no accelerator", UserWarning)


def quiet_git_hash() -> None:
    """lm-eval records `git describe` of the working folder and lets git print "fatal: not a git repository"
    outside one: the same hash (or None), without git's stderr."""
    import subprocess

    try:
        from lm_eval import evaluator
    except ImportError:  # evaluate_model says how to install it
        return

    def git_hash() -> str | None:
        try:
            done = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    evaluator.get_git_commit_hash = git_hash


def error_line(error: Exception, model: str | None = None) -> str:
    """The one line a user sees for an error: the message of poft's own errors and of the errors that name
    what is wrong (ValueError, OSError, ImportError); any other error is marked internal. `model`: the model
    the command loads, for library errors that do not name it."""
    message = " ".join(str(error).split())  # library messages span lines
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        # "[Errno 13] Permission denied: 'out'" -> "out: Permission denied"; poft's OutputWriteError and
        # CheckpointWriteError keep their sentence, without "[Errno 28]"
        message = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
        if isinstance(error, PermissionError) or error.errno == 30:  # EROFS: a read-only file system
            message += " (choose a folder you can write to)"
        elif error.errno == 28 and "run" not in error.strerror:  # ENOSPC, unless poft said what to do
            message += " (free some space, then run the same command again)"
        return message
    if type(error).__name__ == "SafetensorError":  # a weight file cut short or damaged
        return (
            f"the weights of {model or 'the model'} cannot be read ({message}): copy or download them again"
        )
    if type(error).__name__ == "OutOfMemoryError":
        return (
            f"out of memory ({message}): use smaller batches (--per_device_train_batch_size, --batch-tokens)"
        )
    if type(error).__module__.startswith("poft.") or isinstance(error, (ValueError, OSError, ImportError)):
        return message
    return (
        f"internal error: {type(error).__name__}: {message} (run `poft --debug ...` for the traceback; "
        "please report it)"
    )


def model_of(name: str, options: tuple | None) -> str | None:
    """The model `train`, `dpo` and `eval` load (`score` names its aligned models itself)."""
    if options and name in ("train", "dpo"):
        return options[2].model_name_or_path
    return options[0].model if options and name == "eval" else None


def interrupted_line(name: str, options: tuple | None) -> str:
    """What Ctrl-C leaves and how to go on, per command."""
    if name == "score" and options:
        return (
            f"interrupted; the finished shards in {options[0].output} are kept: run the same command again "
            "to resume"
        )
    if name in ("train", "dpo") and options:
        config = options[1]
        if getattr(config.save_strategy, "value", config.save_strategy) == "no":
            return (
                "interrupted; save_strategy is 'no', so no checkpoint was saved: the same command starts over"
            )
        return (
            f"interrupted; the checkpoints saved so far in {config.output_dir} are kept: run the same "
            "command with --resume_from_checkpoint last to resume"
        )
    return "interrupted; nothing to resume: run the same command again"


def end_run(code: int) -> int:
    """End a multi-process run (`poft.distributed.end_distributed`): the process group is destroyed and gloo's
    threads joined now, while the interpreter is whole, once the command's trainer is out of reach.

    If a library poft does not know still holds the group, it would be torn down at interpreter exit, which
    can abort a finished rank (pytorch/pytorch#190489): only then, and after flushing, leave at once.
    """
    from .distributed import end_distributed

    try:
        end_distributed()
    except RuntimeError as e:
        print(f"poft: warning: {e}; leaving without interpreter teardown", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("POFT_DEBUG", "") not in ("", "0")
    while argv[:1] == ["--debug"]:
        debug, argv = True, argv[1:]
    if not argv:
        top_parser().print_help()
        return 2
    if not debug:
        quiet_libraries()
    name, options, stopped, failed = argv[0], None, False, None
    try:
        parsed = parse_command(argv)
        name, options = parsed.name, parsed.options
        code = COMMANDS[parsed.name].run(*parsed.options)
    except UsageError as e:
        parsed.parser.error(str(e))
    except KeyboardInterrupt:
        if debug:
            raise
        stopped = True  # said below: leaving this block frees the interrupted frames (progress bars close)
    except Exception as e:
        if debug:
            raise
        failed, code = error_line(e, model_of(name, options)), 1
    if stopped:
        return interrupted(name, options)
    if failed:  # after the progress bars of the failed frames closed, so that it is the last line
        print(f"poft {name}: error: {failed}", file=sys.stderr)
    return end_run(code)


def interrupted(name: str, options: tuple | None) -> int:
    """Ctrl-C: one line (from one process of a multi-process run), exit 130. A multi-process run leaves at
    once: its peers are interrupted too, and waiting for the process group could hang."""
    if os.environ.get("RANK", "0") == "0":
        print(f"\npoft {name}: {interrupted_line(name, options)}", file=sys.stderr)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return 130


if __name__ == "__main__":
    sys.exit(main())
