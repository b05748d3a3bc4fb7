"""`poft <command>`: a table of subcommands, each parsed from its option dataclasses.

Every subcommand takes `--config options.yaml` plus `--key value` overrides (either `--max-length` or
`--max_length`); the options and their help are written once, in `poft.configs` (train and dpo: poft's
part there, TRL's and transformers' in their config classes, joined in `poft.training_configs`). Parsing:
`poft.options.OptionParser` for every command but train and dpo, whose hundreds of TRL / transformers
options are parsed by TRL's own parser (`trl.TrlParser`, the same conventions) rather than copied. `--help`
never imports TRL: `poft train --help` lists poft's options (~0.2 s), `poft train --help-all` everything.

What each command does is in `poft.commands`; how it ends (one-line errors, Ctrl-C, --debug) in
`poft.exits`.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable
from typing import NamedTuple

from . import __version__
from .commands import (
    UsageError,
    run_dpo,
    run_eval,
    run_filter,
    run_inspect,
    run_merge,
    run_score,
    run_tiny_example,
    run_train,
)
from .configs import (
    DatasetFormatArguments,
    EvalConfig,
    FilterConfig,
    InspectConfig,
    MergeConfig,
    PoFTArguments,
    PoFTDPOArguments,
    ScoreConfig,
    TinyExampleConfig,
)
from .exits import end_run, error_line, interrupted, model_of, quiet_libraries


def train_options() -> tuple[type, ...]:
    from trl import ModelConfig, ScriptArguments

    from .training_configs import PoFTConfig

    return ScriptArguments, PoFTConfig, ModelConfig, DatasetFormatArguments


def dpo_options() -> tuple[type, ...]:
    from trl import ModelConfig, ScriptArguments

    from .training_configs import PoFTDPOConfig

    return ScriptArguments, PoFTDPOConfig, ModelConfig


class Command(NamedTuple):
    help: str
    options: Callable[[], tuple[type, ...]]  # the option dataclasses, in the order `run` takes them
    run: Callable[..., int]
    positional: str | None = None  # an option that may also be given as a bare word: `poft inspect DIR`
    own_options: tuple[type, ...] = ()  # train / dpo: poft's part of `options()`, what `--help` lists


# In the paper's order: train (or score -> inspect -> filter -> train) -> dpo -> eval.
COMMANDS = {
    "train": Command(
        "train with PoFT / bi-PoFT / SFT (TRL's SFTConfig options plus PoFT's)",
        train_options,
        run_train,
        own_options=(PoFTArguments, DatasetFormatArguments),
    ),
    "score": Command(
        "score every example with every aligned model (resumable; torchrun to scale out)",
        lambda: (ScoreConfig,),
        run_score,
    ),
    "inspect": Command(
        "audit a `poft score` folder: statistics, figures, extreme rows",
        lambda: (InspectConfig,),
        run_inspect,
        positional="dir",
    ),
    "filter": Command(
        "keep the best rows by ref_score (or any numeric column)",
        lambda: (FilterConfig,),
        run_filter,
        positional="dir",
    ),
    "dpo": Command(
        "DPO from a PoFT checkpoint (TRL's DPOConfig options)",
        dpo_options,
        run_dpo,
        own_options=(PoFTDPOArguments,),
    ),
    "eval": Command(
        "lm-evaluation-harness benchmarks (default: Open LLM Leaderboard v1)", lambda: (EvalConfig,), run_eval
    ),
    "merge": Command(
        "write a full model from a LoRA adapter folder and its base model",
        lambda: (MergeConfig,),
        run_merge,
        positional="adapter",
    ),
    "tiny-example": Command(
        "write a tiny model and a small scored dataset (offline)",
        lambda: (TinyExampleConfig,),
        run_tiny_example,
    ),
}


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
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="YAML",
        help=CONFIG_HELP,
    )
    if command.positional:
        parser.add_argument(
            command.positional,
            nargs="?",
            default=argparse.SUPPRESS,
            metavar=command.positional.upper(),
            help=f"Same as --{command.positional}.",
        )
    return parser


# What `poft train --help` / `poft dpo --help` say after poft's own options: where the rest are
TRL_OPTIONS = {
    "train": "TRL's SFTConfig, transformers' TrainingArguments and TRL's ModelConfig / ScriptArguments options "
    "apply too; the usual ones: --model_name_or_path, --dataset_name, --output_dir (required), "
    "--learning_rate, --num_train_epochs, --max_steps, --per_device_train_batch_size, "
    "--gradient_accumulation_steps, --max_length, --bf16, --gradient_checkpointing, --use_peft --lora_r "
    "--lora_target_modules, --report_to.",
    "dpo": "TRL's DPOConfig, transformers' TrainingArguments and TRL's ModelConfig / ScriptArguments options "
    "apply too; the usual ones: --model_name_or_path (the PoFT checkpoint), --dataset_name (preference pairs), "
    "--output_dir (required), --beta, --loss_type, --learning_rate, --num_train_epochs, --max_steps, "
    "--per_device_train_batch_size, --max_length, --bf16, --use_peft.",
}


def help_parser(name: str) -> argparse.ArgumentParser:
    """The parser whose help `poft NAME --help` prints. For train and dpo: poft's own options only (no TRL
    import: a fraction of a second instead of ~10 s), then where TRL's are (`--help-all`)."""
    if name not in TRL_COMMANDS:
        return command_parser(name)
    from .options import OptionParser

    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    parser = OptionParser(
        COMMANDS[name].own_options,
        prog=f"poft {name}",
        usage=f"poft {name} [--config YAML] [--help-all] [options]",
        description=f"{COMMANDS[name].help}.\n\n"
        + textwrap.fill(
            f"poft's own options are below; `poft {name} --help-all` lists every option. "
            + TRL_OPTIONS[name],
            100,
        ),
        epilog=f"All of them, with their help (a few seconds, ~900 lines): poft {name} --help-all",
        formatter_class=Formatter,
    )
    parser.add_argument("--config", metavar="YAML", help=CONFIG_HELP)
    parser.add_argument("--help-all", action="store_true", help="List every option, TRL's included.")
    return parser


CONFIG_HELP = "Options from a YAML file (keys are the option names); the command line overrides it."


def top_parser() -> argparse.ArgumentParser:
    """`poft --help` (the table's one-line helps), `poft --version` and `poft --debug <command>`; the
    command's parser does the rest."""
    top = argparse.ArgumentParser(
        prog="poft",
        description="Preference-Oriented Supervised Fine-Tuning.",
        epilog="`poft <command> --help` lists a command's options.",
    )
    top.error = usage_exit(top.prog)
    top.add_argument("--version", action="version", version=f"poft {__version__}")
    top.add_argument(
        "--debug",
        action="store_true",
        help="Show tracebacks and library warnings (also POFT_DEBUG=1); give it before the command.",
    )
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
    if name in TRL_COMMANDS and {"-h", "--help"} & set(argv[1:]):
        help_parser(name).print_help()
        sys.exit(0)
    parser = command_parser(name)
    if "--help-all" in argv[1:]:
        parser.print_help()
        sys.exit(0)
    try:
        if name in TRL_COMMANDS:  # TRL's parser reads --config itself: its value types are checked here
            from .options import check_config_file

            check_config_file(argv[1:], parser.dataclass_types)
        options = parser.parse_args_and_config(args=argv[1:])
    except (ValueError, OSError) as e:  # an unreadable --config, unknown keys in it, a refused combination
        parser.error(" ".join(str(e).split()))
    return Parsed(name, parser, options)


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


if __name__ == "__main__":
    sys.exit(main())
