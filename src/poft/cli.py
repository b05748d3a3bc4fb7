"""`poft <subcommand>`: one small function per subcommand; the work is done by the library modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def run_train(argv: list[str]) -> int:
    """`poft train --config recipe.yaml [--key value ...]`: TRL's parser conventions, PoFTTrainer underneath."""
    from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

    from .data import load_sft_dataset
    from .trainer import PoFTConfig, PoFTTrainer

    parser = TrlParser((ScriptArguments, PoFTConfig, ModelConfig), prog="poft train")
    script_args, config, model_args = parser.parse_args_and_config(args=argv)
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
        script_args.dataset_name, script_args.dataset_train_split, script_args.dataset_config
    )
    evaluation = None
    if config.eval_strategy != "no":
        evaluation = load_sft_dataset(
            script_args.dataset_name, script_args.dataset_test_split, script_args.dataset_config
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
    return 0


def run_tiny_example(args: argparse.Namespace) -> int:
    """`poft tiny-example --output DIR`: a tiny model and a small scored dataset for trying `poft train`."""
    from .example import write_tiny_example

    paths = write_tiny_example(args.output, n_rows=args.rows, seed=args.seed)
    print(f"poft: wrote {paths['model']} and {paths['data']}")
    return 0


def run_score(args: argparse.Namespace) -> int:
    """`poft score --dataset D --model M1 [--model M2 ...] --output DIR`: aligned-model scores + ref_score."""
    from .chat import ChatTemplateError, RowError
    from .scoring import score_dataset
    from .shards import RunMismatchError

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
            progress=not args.no_progress,
            rows_per_shard=args.rows_per_shard,
        )
    except (RowError, ChatTemplateError, RunMismatchError) as e:
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
    score.add_argument("--rows-per-shard", type=int, default=2048, help="rows per resumable shard file")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.set_defaults(func=run_score)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poft", description="Preference-Oriented Supervised Fine-Tuning.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    train = sub.add_parser(
        "train", add_help=False, help="train with PoFT / bi-PoFT / SFT (`poft train --help` for all options)"
    )
    train.set_defaults(func=None, argv_func=run_train)

    add_score_parser(sub)

    tiny = sub.add_parser("tiny-example", help="write a tiny model and a small scored dataset (offline)")
    tiny.add_argument("--output", required=True, help="folder to write model/ and train.jsonl into")
    tiny.add_argument("--rows", type=int, default=256, help="number of training rows")
    tiny.add_argument("--seed", type=int, default=0, help="random seed")
    tiny.set_defaults(func=run_tiny_example)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    argv_func: Callable[[list[str]], int] | None = getattr(args, "argv_func", None)
    if argv_func is not None:
        return argv_func(argv[1:])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
