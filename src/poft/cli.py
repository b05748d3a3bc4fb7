"""`poft <subcommand>`: one small function per subcommand; the work is done by the library modules."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DatasetFormatArguments:
    """`poft train` only: how the training file's rows are read (see poft.formats)."""

    dataset_format: str | None = field(
        default=None,
        metadata={
            "help": "Force the dataset format instead of detecting it from the columns: "
            "messages, sharegpt, alpaca or prompt_completion.",
            "choices": ["messages", "sharegpt", "alpaca", "prompt_completion"],
        },
    )


def run_train(argv: list[str]) -> int:
    """`poft train --config recipe.yaml [--key value ...]`: TRL's parser conventions, PoFTTrainer underneath."""
    from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

    from .readers import load_sft_dataset
    from .trainer import PoFTConfig, PoFTTrainer

    parser = TrlParser((ScriptArguments, PoFTConfig, ModelConfig, DatasetFormatArguments), prog="poft train")
    script_args, config, model_args, format_args = parser.parse_args_and_config(args=argv)
    if not model_args.model_name_or_path:
        parser.error("--model_name_or_path is required (a local folder or a Hub id)")
    if not script_args.dataset_name:
        parser.error(
            "--dataset_name is required (a JSON/JSONL/Parquet/CSV file, a save_to_disk folder or a Hub id)"
        )
    config.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": config.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(config.model_init_kwargs or {}),
    }
    train = load_sft_dataset(
        script_args.dataset_name,
        script_args.dataset_train_split,
        script_args.dataset_config,
        format=format_args.dataset_format,
    )
    evaluation = None
    if config.eval_strategy != "no":
        evaluation = load_sft_dataset(
            script_args.dataset_name,
            script_args.dataset_test_split,
            script_args.dataset_config,
            format=format_args.dataset_format,
        )
    trainer = PoFTTrainer(
        model=model_args.model_name_or_path,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        peft_config=get_peft_config(model_args),
    )
    trainer.accelerator.print(
        f"poft: loss_type={config.loss_type} beta={config.beta} gamma={config.gamma} "
        f"normalization={config.score_normalization}, {len(trainer.train_dataset)} training rows"
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    trainer.accelerator.print(f"poft: model saved to {config.output_dir}")
    trainer.end()  # destroy the process group: a gloo rank exiting with it alive can abort at teardown
    return 0


def run_tiny_example(args: argparse.Namespace) -> int:
    """`poft tiny-example --output DIR`: a tiny model and a small scored dataset for trying `poft train`."""
    from .example import write_tiny_example

    paths = write_tiny_example(args.output, n_rows=args.rows, seed=args.seed)
    print(f"poft: wrote {paths['model']} and {paths['data']}")
    return 0


def run_score(args: argparse.Namespace) -> int:
    """`poft score --dataset D --model M1 [--model M2 ...] --output DIR`: aligned-model scores + ref_score."""
    from .scoring import score_dataset

    try:
        score_dataset(
            args.dataset,
            args.model,
            args.output,
            split=args.split,
            max_length=args.max_length,
            batch_tokens=args.batch_tokens,
            dtype=args.dtype,
            normalization=args.normalization,
            on_bad_row=args.on_bad_row,
            format=args.format,
            progress=not args.no_progress,
            rows_per_shard=args.rows_per_shard,
        )
    except (ValueError, OSError) as e:  # RowError, ChatTemplateError, RunMismatchError, AlignedModelError
        # OSError: a full disk, an unwritable output folder, a missing input file: one line, no traceback
        print(f"poft score: error: {e}", file=sys.stderr)
        return 1
    return 0


def add_score_parser(sub: argparse._SubParsersAction) -> None:
    score = sub.add_parser(
        "score",
        help="score every example with every aligned model (resumable; torchrun/accelerate launch to scale out)",
    )
    score.add_argument(
        "--dataset", required=True, help="JSON/JSONL/Parquet/CSV file, save_to_disk folder or Hub id"
    )
    score.add_argument("--split", default="train", help="split of a Hub dataset or DatasetDict folder")
    score.add_argument(
        "--model", action="append", required=True, help="aligned model PATH_OR_HUB_ID or ALIAS=PATH (repeat)"
    )
    score.add_argument(
        "--output", required=True, help="output folder (save_to_disk + manifest.json); resumes"
    )
    score.add_argument("--max-length", type=int, default=None, help="truncate longer conversations (counted)")
    score.add_argument("--batch-tokens", type=int, default=16384, help="padded tokens per batch")
    score.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    score.add_argument("--normalization", default="token", choices=["token", "byte", "none"])
    score.add_argument("--on-bad-row", default="error", choices=["error", "skip"])
    score.add_argument(
        "--format",
        default=None,
        choices=["messages", "sharegpt", "alpaca", "prompt_completion"],
        help="force the input format instead of detecting it from the columns",
    )
    score.add_argument("--rows-per-shard", type=int, default=2048, help="rows per resumable shard file")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.set_defaults(func=run_score)


def run_demo(args: argparse.Namespace) -> int:
    """`poft demo`: the offline noise experiment (SFT vs PoFT vs bi-PoFT on tiny models), with a report."""
    import dataclasses

    from .demo import FULL, MINI, DemoConfig
    from .demo import run_demo as demo

    preset = FULL if args.full else MINI if args.mini else {}
    overrides = {
        "seeds": args.seeds,
        "noise_levels": tuple(args.noise_levels) if args.noise_levels else None,
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
    }
    config = DemoConfig(output=args.output, rebuild=args.rebuild, **preset)
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    demo(config)
    return 0


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="offline end-to-end experiment: SFT vs PoFT vs bi-PoFT on noisy synthetic data, with a report",
    )
    demo.add_argument(
        "--output", default="demo_output", help="folder for results, plots, report and cached models"
    )
    size = demo.add_mutually_exclusive_group()
    size.add_argument(
        "--full", action="store_true", help="the larger run for RESULTS.md (3 seeds, more data)"
    )
    size.add_argument("--mini", action="store_true", help="a seconds-long smoke run (tests)")
    demo.add_argument("--seeds", type=int, help="number of training seeds (default 1, --full 3)")
    demo.add_argument(
        "--noise-levels", type=float, nargs="+", help="shares of noisy rows (default 0 0.3 0.5)"
    )
    demo.add_argument("--epochs", type=int, help="target training epochs (default 5, --full 8)")
    demo.add_argument(
        "--learning-rate", type=float, help="peak learning rate for every method (default 3e-3)"
    )
    demo.add_argument("--rebuild", action="store_true", help="rebuild the cached aligned models and scores")
    demo.set_defaults(func=run_demo)


def run_inspect(args: argparse.Namespace) -> int:
    """`poft inspect DIR [--output OUT]`: score statistics, correlations, histograms, lowest/highest rows."""
    from .inspection import inspect_scores, summary_table

    summary = inspect_scores(args.dir, args.output, k=args.k)
    print(summary_table(summary))
    print("\n" + summary["extremes_text"])
    print(f"\npoft: wrote {len(summary['figures'])} figures, summary.json and extremes.txt to "
          f"{args.output or Path(args.dir) / 'inspect'}")  # fmt: skip
    return 0


def run_filter(args: argparse.Namespace) -> int:
    """`poft filter DIR (--keep-top F | --min-score X) [--by COLUMN] --output OUT`."""
    from .filtering import filter_dataset
    from .readers import load_sft_dataset

    if Path(args.output).resolve() == Path(args.dir).resolve():
        print("poft filter: error: --output must differ from the input", file=sys.stderr)
        return 1
    try:
        dataset = load_sft_dataset(args.dir, args.split, format=args.format)
        filter_dataset(dataset, args.output, by=args.by, keep_top=args.keep_top, min_score=args.min_score,
                       source=args.dir)  # fmt: skip
    except ValueError as e:  # RowError included: a bad file, row or column, named
        print(f"poft filter: error: {e}", file=sys.stderr)
        return 1
    return 0


def run_dpo(argv: list[str]) -> int:
    """`poft dpo --config recipe.yaml [--key value ...]`: TRL's DPOTrainer from a PoFT checkpoint."""
    from trl import DPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config

    from .dpo import PoFTDPOConfig, normalize_preferences
    from .readers import load_raw_dataset

    parser = TrlParser((ScriptArguments, PoFTDPOConfig, ModelConfig), prog="poft dpo")
    script_args, config, model_args = parser.parse_args_and_config(args=argv)
    if not model_args.model_name_or_path or not script_args.dataset_name:
        parser.error(
            "--model_name_or_path (the PoFT checkpoint) and --dataset_name (preference pairs) are required"
        )
    config.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(config.model_init_kwargs or {}),
    }

    def pairs(split: str):
        raw, _ = load_raw_dataset(script_args.dataset_name, split, script_args.dataset_config)
        return normalize_preferences(raw, f"{script_args.dataset_name} [{split}]")

    train = pairs(script_args.dataset_train_split)
    evaluation = pairs(script_args.dataset_test_split) if config.eval_strategy != "no" else None
    trainer = DPOTrainer(model=model_args.model_name_or_path, args=config, train_dataset=train,
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
    trainer.end()
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """`poft eval --model DIR [--tasks ...]`: lm-evaluation-harness; results.json and a printed table."""
    from .evaluation import evaluate_model, parse_tasks, results_table

    tasks = parse_tasks(args.tasks, args.num_fewshot)
    batch_size = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    output = args.output or str(Path(args.model) / "eval")
    try:
        report = evaluate_model(args.model, tasks, output, include_path=args.include_path,
                                batch_size=batch_size, device=args.device, dtype=args.dtype,
                                limit=limit, apply_chat_template=args.apply_chat_template)  # fmt: skip
    except (ImportError, ValueError) as e:
        print(f"poft eval: error: {e}", file=sys.stderr)
        return 1
    print(results_table(report))
    print(f"poft: results written to {Path(output) / 'results.json'}")
    return 0


def add_pipeline_parsers(sub: argparse._SubParsersAction) -> None:
    """inspect, filter, dpo, eval: the paper's pipeline after `poft score` (score -> filter -> train -> dpo -> eval)."""
    inspect = sub.add_parser("inspect", help="audit a `poft score` folder: statistics, figures, extreme rows")
    inspect.add_argument("dir", help="folder written by `poft score`")
    inspect.add_argument(
        "--output", default=None, help="where to write figures and summary (default DIR/inspect)"
    )
    inspect.add_argument("-k", type=int, default=5, help="how many lowest and highest rows to print")
    inspect.set_defaults(func=run_inspect)

    keep = sub.add_parser("filter", help="keep the best rows by ref_score (or any numeric column)")
    keep.add_argument("dir", help="a `poft score` folder (or any dataset with a numeric score column)")
    rule = keep.add_mutually_exclusive_group(required=True)
    rule.add_argument("--keep-top", type=float, help="fraction of scored rows to keep, e.g. 0.4")
    rule.add_argument("--min-score", type=float, help="keep rows whose score is >= this")
    keep.add_argument("--by", default="ref_score", help="numeric column to rank by (IFD, Deita, ...)")
    keep.add_argument(
        "--output", required=True, help="output folder (save_to_disk), readable by `poft train`"
    )
    keep.add_argument("--split", default="train", help="split of a Hub dataset or DatasetDict folder")
    keep.add_argument(
        "--format", default=None, help="force the input format (messages, sharegpt, alpaca, ...)"
    )
    keep.set_defaults(func=run_filter)

    dpo = sub.add_parser(
        "dpo", add_help=False, help="DPO from a PoFT checkpoint (`poft dpo --help` for all options)"
    )
    dpo.set_defaults(func=None, argv_func=run_dpo)

    evaluate = sub.add_parser(
        "eval", help="lm-evaluation-harness benchmarks (default: Open LLM Leaderboard v1)"
    )
    evaluate.add_argument("--model", required=True, help="model folder or Hub id")
    evaluate.add_argument("--tasks", nargs="*", default=None,
                          help="task or task:shots, space/comma separated (default: the leaderboard v1 six)")  # fmt: skip
    evaluate.add_argument("--num-fewshot", type=int, default=None, help="shots for tasks given without ':N'")
    evaluate.add_argument("--include-path", default=None, help="folder of local lm-eval task YAML files")
    evaluate.add_argument("--output", default=None, help="folder for results.json (default MODEL/eval)")
    evaluate.add_argument("--batch-size", default="8", help="lm-eval batch size (or 'auto')")
    evaluate.add_argument("--device", default=None, help="cuda, cuda:0, cpu (default: cuda if available)")
    evaluate.add_argument("--dtype", default="auto", help="model dtype: auto, bfloat16, float32")
    evaluate.add_argument("--limit", type=float, default=None, help="at most this many examples per task")
    evaluate.add_argument(
        "--apply-chat-template", action="store_true", help="wrap prompts in the chat template"
    )
    evaluate.set_defaults(func=run_eval)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poft", description="Preference-Oriented Supervised Fine-Tuning.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    train = sub.add_parser(
        "train", add_help=False, help="train with PoFT / bi-PoFT / SFT (`poft train --help` for all options)"
    )
    train.set_defaults(func=None, argv_func=run_train)

    add_score_parser(sub)
    add_pipeline_parsers(sub)

    tiny = sub.add_parser("tiny-example", help="write a tiny model and a small scored dataset (offline)")
    tiny.add_argument("--output", required=True, help="folder to write model/ and train.jsonl into")
    tiny.add_argument("--rows", type=int, default=256, help="number of training rows")
    tiny.add_argument("--seed", type=int, default=0, help="random seed")
    tiny.set_defaults(func=run_tiny_example)

    add_demo_parser(sub)
    return parser


def leave_distributed_run(code: int) -> int:
    """In a multi-process run (torchrun / accelerate launch), exit at once once everything is written.

    Full-suite runs here saw a rank that had finished, saved and destroyed its gloo process group abort at
    interpreter teardown ("terminate called without an active exception", exit -6) in 2 of 4 runs, which
    torchrun reports as a failed job; the cause (a C++ thread destroyed at exit) was not pinned down.
    Skipping interpreter teardown with os._exit after flushing avoids it; single-process runs exit normally.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    argv_func: Callable[[list[str]], int] | None = getattr(args, "argv_func", None)
    if argv_func is not None:
        return leave_distributed_run(argv_func(argv[1:]))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return leave_distributed_run(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
