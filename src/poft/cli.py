"""`poft <command>`: a table of subcommands, each parsed by TRL's parser from its option dataclasses.

Every subcommand takes `--config options.yaml` plus `--key value` overrides (either `--max-length` or
`--max_length`); the options and their help live in `poft.configs` (train and dpo: TRL's config classes).
The library modules do the work, imported when a command runs, so `poft --help` and `poft <command> --help`
stay fast (`poft train --help` and `poft dpo --help` need TRL's training configs: a few seconds).
"""

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from . import __version__
from .configs import (
    DatasetFormatArguments,
    DemoArguments,
    EvalConfig,
    FilterConfig,
    InspectConfig,
    ScoreConfig,
    TinyExampleConfig,
)


class UsageError(Exception):
    """Options that parse but cannot be run together: the command exits 2 with argparse's message."""


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

    from .readers import read_sft
    from .trainer import PoFTTrainer

    if not model_args.model_name_or_path:
        raise UsageError("--model_name_or_path is required (a local folder or a Hub id)")
    if not script_args.dataset_name:
        raise UsageError(
            "--dataset_name is required (a JSON/JSONL/Parquet/CSV file, a save_to_disk folder or a Hub id)"
        )
    config.model_init_kwargs = model_init_kwargs(config, model_args)

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
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    trainer.accelerator.print(f"poft: model saved to {config.output_dir}")
    trainer.accelerator.free_memory()  # drop the DDP / DeepSpeed wrappers; main() then ends the process group
    return 0


def run_dpo(script_args, config, model_args) -> int:
    """`poft dpo --config recipe.yaml [--key value ...]`: TRL's DPOTrainer from a PoFT checkpoint."""
    from trl import get_peft_config

    from .dpo import PoFTDPOTrainer, load_preferences

    if not model_args.model_name_or_path or not script_args.dataset_name:
        raise UsageError(
            "--model_name_or_path (the PoFT checkpoint) and --dataset_name (preference pairs) are required"
        )
    config.model_init_kwargs = model_init_kwargs(config, model_args)

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
    from .scoring import score_dataset

    try:
        score_dataset(config.dataset, config.model, config.output, split=config.split,
                      max_length=config.max_length, batch_tokens=config.batch_tokens, dtype=config.dtype,
                      normalization=config.normalization, on_bad_row=config.on_bad_row, format=config.format,
                      progress=config.progress, rows_per_shard=config.rows_per_shard,
                      flush_seconds=config.flush_seconds)  # fmt: skip
    except (ValueError, OSError) as e:  # RowError, ChatTemplateError, RunMismatchError, AlignedModelError
        # OSError: a full disk, an unwritable output folder, a missing input file: one line, no traceback
        print(f"poft score: error: {e}", file=sys.stderr)
        return 1
    return 0


def run_inspect(config: InspectConfig) -> int:
    """`poft inspect DIR [--output OUT]`: score statistics, correlations, histograms, lowest/highest rows."""
    from .inspection import inspect_scores, summary_table

    try:
        summary = inspect_scores(config.dir, config.output, k=config.k, by_label=config.by_label)
    except ValueError as e:  # an unfinished or unscored folder, an unknown --by-label column: one line
        print(f"poft inspect: error: {e}", file=sys.stderr)
        return 1
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
        print("poft filter: error: --output must differ from the input", file=sys.stderr)
        return 1
    try:
        dataset = load_sft_dataset(config.dir, config.split, format=config.format)
        filter_dataset(dataset, config.output, by=config.by, keep_top=config.keep_top,
                       min_score=config.min_score, source=config.dir)  # fmt: skip
    except ValueError as e:  # RowError included: a bad file, row or column, named
        print(f"poft filter: error: {e}", file=sys.stderr)
        return 1
    return 0


def run_eval(config: EvalConfig) -> int:
    """`poft eval --model DIR [--tasks ...]`: lm-evaluation-harness; results.json and a printed table."""
    from .evaluation import evaluate_model, parse_tasks, results_table

    batch_size = int(config.batch_size) if config.batch_size.isdigit() else config.batch_size
    limit = int(config.limit) if config.limit is not None and config.limit >= 1 else config.limit
    output = config.output or str(Path(config.model) / "eval")
    try:
        tasks = parse_tasks(config.tasks, config.num_fewshot)
        report = evaluate_model(config.model, tasks, output, include_path=config.include_path,
                                batch_size=batch_size, device=config.device, dtype=config.dtype,
                                limit=limit, apply_chat_template=config.apply_chat_template)  # fmt: skip
    except (ImportError, ValueError) as e:
        print(f"poft eval: error: {e}", file=sys.stderr)
        return 1
    print(results_table(report))
    print(f"poft: results written to {Path(output) / 'results.json'}")
    return 0


def run_demo(args: DemoArguments) -> int:
    """`poft demo`: the offline noise experiment (SFT vs PoFT vs bi-PoFT on tiny models), with a report."""
    import dataclasses

    from .demo import FULL, MINI, DemoConfig
    from .demo import run_demo as demo

    preset = FULL if args.full else MINI if args.mini else {}
    noise_levels = tuple(args.noise_levels) if args.noise_levels else None
    overrides = {"seeds": args.seeds, "noise_levels": noise_levels, "epochs": args.epochs,
                 "learning_rate": args.learning_rate}  # fmt: skip
    config = DemoConfig(output=args.output, rebuild=args.rebuild, **preset)
    demo(dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None}))
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
    "demo": Command("offline end-to-end experiment: SFT vs PoFT vs bi-PoFT on noisy data, with a report",
                    lambda: (DemoArguments,), run_demo),
}  # fmt: skip


def command_parser(name: str) -> argparse.ArgumentParser:
    """TRL's parser over the command's option dataclasses, plus `--config` (and the bare-word positional)."""
    from trl import TrlParser

    command = COMMANDS[name]
    parser = TrlParser(command.options(), prog=f"poft {name}", description=command.help)
    # TrlParser reads --config itself before argparse sees the arguments: this entry is for --help only
    parser.add_argument("--config", default=argparse.SUPPRESS, metavar="YAML",
                        help="Options from a YAML file (keys are the option names); the command line overrides it.")  # fmt: skip
    if command.positional:
        parser.add_argument(command.positional, nargs="?", default=argparse.SUPPRESS,
                            metavar=command.positional.upper(), help=f"Same as --{command.positional}.")  # fmt: skip
    return parser


def top_parser() -> argparse.ArgumentParser:
    """`poft --help` (the table's one-line helps) and `poft --version`; the command's parser does the rest."""
    top = argparse.ArgumentParser(prog="poft", description="Preference-Oriented Supervised Fine-Tuning.",
                                  epilog="`poft <command> --help` lists a command's options.")  # fmt: skip
    top.add_argument("--version", action="version", version=f"poft {__version__}")
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
        parser.error(str(e))
    return Parsed(name, parser, options)


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
    if not argv:
        top_parser().print_help()
        return 2
    parsed = parse_command(argv)
    try:
        code = COMMANDS[parsed.name].run(*parsed.options)
    except UsageError as e:
        parsed.parser.error(str(e))
    return end_run(code)


if __name__ == "__main__":
    sys.exit(main())
