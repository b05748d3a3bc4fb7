"""What each `poft` command does once its options are parsed: one `run_*` function per command.

Each imports the library modules it uses when it runs, so `poft <command> --help` stays fast and a command
imports only what it needs (`poft inspect` / `poft filter` of a scored folder: no torch, transformers or
TRL; tests/unit/test_import_graph.py). On the CPU, score, train and dpo set torch's threads from the CPUs
the process may use (`device.fit_cpu_threads`).
"""

from __future__ import annotations

from pathlib import Path

from .configs import (
    DatasetFormatArguments,
    EvalConfig,
    FilterConfig,
    InspectConfig,
    MergeConfig,
    ScoreConfig,
    TinyExampleConfig,
)
from .console import say


class UsageError(Exception):
    """Options that parse but cannot be run together: the command exits 2 with argparse's message."""


def check_model_path(option: str, path: str, check_base: bool = True, gguf: bool = False) -> str:
    """What a model path is (`adapters.model_kind`: "model", "adapter" or "gguf"), checked before anything loads.

    A model that is neither a local file or folder nor a Hub id is named as missing: transformers would say
    "Repo id must use alphanumeric chars" (`./missing`) or that it could not reach the Hub. A Hub id is left
    to transformers, unless the Hub is offline and the HF cache has no copy of it. A folder that is neither a
    model nor an adapter is refused saying what it lacks, and an adapter's base model must be there too
    (`check_base`). A GGUF file is refused unless the command reads one (`gguf`: `poft score` only)."""
    from .adapters import ADAPTER_CONFIG, HUB_ID, NotAModelError, base_model, model_kind

    local = Path(path).expanduser().exists()
    if not local and (not HUB_ID.fullmatch(path) or path.lower().endswith(".gguf")):
        raise FileNotFoundError(f"{option} {path}: no such file or folder")
    if not local:
        from huggingface_hub import constants, try_to_load_from_cache

        cached = (isinstance(try_to_load_from_cache(path, f), str) for f in ("config.json", ADAPTER_CONFIG))
        if constants.HF_HUB_OFFLINE and not any(cached):
            raise FileNotFoundError(
                f"{option} {path}: no such file or folder here, and no Hub model of that name in the HF cache "
                "(the Hub is offline: HF_HUB_OFFLINE=1)"
            )
    try:
        kind = model_kind(path)
    except NotAModelError as e:
        raise NotAModelError(f"{option} {e}") from e
    if kind == "adapter" and check_base:
        base_model(path)  # its error names the adapter and the base
    if kind == "gguf" and not gguf:  # transformers would say "the config file ... is not a valid JSON file"
        raise NotAModelError(
            f"{option} {path} is a GGUF file: only `poft score` reads GGUF files; give a model folder "
            "(config.json and weights), e.g. one saved from it by transformers' from_pretrained(FOLDER, "
            "gguf_file=FILE).save_pretrained(OUT)"
        )
    return kind


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
    from .locks import output_lock

    if not model_args.model_name_or_path:
        raise UsageError("--model_name_or_path is required (a local folder or a Hub id)")
    if not script_args.dataset_name:
        raise UsageError(
            "--dataset_name is required (a JSON/JSONL/Parquet/CSV file, a save_to_disk folder or a Hub id)"
        )
    if check_model_path("--model_name_or_path", model_args.model_name_or_path) == "adapter":
        raise ValueError(
            f"--model_name_or_path {model_args.model_name_or_path} is a PEFT adapter folder: poft train starts "
            f"from a full model; write one with `poft merge {model_args.model_name_or_path} --output DIR`"
        )
    with output_lock(config.output_dir, command="poft train"):  # one run per folder, until the model is saved
        return train_locked(script_args, config, model_args, format_args)


def train_locked(script_args, config, model_args, format_args: DatasetFormatArguments) -> int:
    """`poft train` once its options are checked and its output folder locked: read, train, save."""
    from trl import get_peft_config

    from .device import fit_cpu_threads
    from .readers import read_sft
    from .trainer import PoFTTrainer

    config.model_init_kwargs = model_init_kwargs(config, model_args)
    if config.use_cpu:  # set by PoFTConfig where there is no GPU
        fit_cpu_threads()

    def rows(split: str):  # read once; the trainer reports unreadable and untrainable rows together
        return read_sft(
            script_args.dataset_name,
            split,
            script_args.dataset_config,
            format=format_args.dataset_format,
            on_bad_row="skip",
            report=False,
        )

    train = rows(script_args.dataset_train_split)
    evaluation = rows(script_args.dataset_test_split) if config.eval_strategy != "no" else None
    trainer = PoFTTrainer(
        model=model_args.model_name_or_path,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        peft_config=get_peft_config(model_args),
    )
    say(
        f"objective={config.objective} beta={config.beta} gamma={config.gamma} "
        f"normalization={config.score_normalization}, {len(trainer.train_dataset)} training rows"
    )
    if len(trainer.train_dataset) == 0:  # torch would say "num_samples=0"
        raise ValueError(
            f"{script_args.dataset_name}: no row is left to train on (the lines above say why rows were "
            "dropped)"
        )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    say(f"model saved to {config.output_dir}")
    trainer.accelerator.free_memory()  # drop the DDP / DeepSpeed wrappers; main() then ends the process group
    return 0


def run_dpo(script_args, config, model_args) -> int:
    """`poft dpo --config recipe.yaml [--key value ...]`: TRL's DPOTrainer from a PoFT checkpoint."""
    from .locks import output_lock

    if not model_args.model_name_or_path or not script_args.dataset_name:
        raise UsageError(
            "--model_name_or_path (the PoFT checkpoint) and --dataset_name (preference pairs) are required"
        )
    kind = check_model_path("--model_name_or_path", model_args.model_name_or_path)
    with output_lock(config.output_dir, command="poft dpo"):  # one run per folder, until the model is saved
        return dpo_locked(script_args, config, model_args, kind)


def dpo_locked(script_args, config, model_args, kind: str) -> int:
    """`poft dpo` once its options are checked and its output folder locked: read, train, save."""
    from trl import get_peft_config

    from .device import fit_cpu_threads
    from .dpo import PoFTDPOTrainer, drop_reference_copy, load_preferences, policy_from_adapter

    config.model_init_kwargs = model_init_kwargs(config, model_args)
    if config.use_cpu:  # set by PoFTDPOConfig where there is no GPU
        fit_cpu_threads()
    model, tokenizer, peft_config = model_args.model_name_or_path, None, get_peft_config(model_args)
    if kind == "adapter":  # the reference is base + adapter, not the base
        model, tokenizer = policy_from_adapter(model_args.model_name_or_path, config, model_args.use_peft)
        peft_config = None

    def pairs(split: str):
        return load_preferences(script_args.dataset_name, split, script_args.dataset_config)

    train = pairs(script_args.dataset_train_split)
    evaluation = pairs(script_args.dataset_test_split) if config.eval_strategy != "no" else None
    trainer = PoFTDPOTrainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    say(
        f"DPO from {model_args.model_name_or_path}: beta={config.beta} loss={config.loss_type}, "
        f"{len(trainer.train_dataset)} pairs, reference log-probs "
        + ("precomputed" if config.precompute_ref_log_probs else "computed on the fly")
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    drop_reference_copy(trainer.model)
    trainer.save_model(config.output_dir)
    trainer.save_state()  # trainer_state.json: the logged DPO losses and reward margins, for comparisons
    say(f"model saved to {config.output_dir}")
    trainer.accelerator.free_memory()
    return 0


def run_score(config: ScoreConfig) -> int:
    """`poft score --dataset D --model M1 [--model M2 ...] --output DIR`: aligned-model scores + ref_score."""
    import torch

    from .aligned import parse_model_spec
    from .device import fit_cpu_threads
    from .scoring import score_dataset

    for spec in config.model:
        check_model_path("--model", parse_model_spec(spec)[1], gguf=True)
    if not torch.cuda.is_available():  # scoring computes on the CPU (score_dataset's device)
        fit_cpu_threads()
    score_dataset(config)
    return 0


def run_inspect(config: InspectConfig) -> int:
    """`poft inspect DIR [--output OUT]`: score statistics, correlations, histograms, lowest/highest rows."""
    from .inspection import inspect_scores, summary_table

    summary = inspect_scores(
        config.dir, config.output, k=config.k, by_label=config.by_label, weights=config.weights
    )
    print(summary_table(summary))
    print("\n" + summary["extremes_text"])
    print(
        f"\npoft: wrote {len(summary['figures'])} figures, summary.json and extremes.txt to "
        f"{config.output or Path(config.dir) / 'inspect'}"
    )
    return 0


def run_filter(config: FilterConfig) -> int:
    """`poft filter DIR (--keep-top F | --min-score X) [--by COLUMN] --output OUT`."""
    from .filtering import filter_dataset
    from .outputs import claim_output
    from .readers import load_sft_dataset

    # refuses a non-empty --output (without --overwrite) and locks it, before the input is read
    with claim_output(config.output, config.dir, command="poft filter", overwrite=config.overwrite):
        rows = load_sft_dataset(config.dir, config.split, format=config.format, on_bad_row=config.on_bad_row)
        filter_dataset(
            rows,
            config.output,
            by=config.by,
            keep_top=config.keep_top,
            min_score=config.min_score,
            source=config.dir,
            overwrite=config.overwrite,
        )
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
    report = evaluate_model(
        config.model,
        tasks,
        output,
        include_path=config.include_path,
        batch_size=batch_size,
        device=config.device,
        dtype=config.dtype,
        limit=limit,
        apply_chat_template=config.apply_chat_template,
    )
    print(results_table(report))
    say(f"results written to {Path(output) / 'results.json'}")
    return 0


def run_merge(config: MergeConfig) -> int:
    """`poft merge ADAPTER --output DIR [--dtype D]`: base + adapter written as one full model."""
    from .adapters import AdapterError, merge_adapter
    from .outputs import claim_output, written_as_unit

    if config.base_model is not None:
        check_model_path("--base_model", config.base_model)
    try:
        kind = check_model_path("adapter", config.adapter, check_base=config.base_model is None)
    except AdapterError as e:
        raise AdapterError(f"{e} (or give the base with --base_model)") from e
    if kind != "adapter":
        raise ValueError(f"{config.adapter} is a {kind}, not a PEFT adapter folder: nothing to merge")
    # written as a unit: a failed or killed merge leaves nothing at --output that looks like a model
    with claim_output(config.output, config.adapter, command="poft merge", overwrite=config.overwrite):
        with written_as_unit(config.output, "the merged model") as folder:
            merge_adapter(config.adapter, folder, config.dtype, config.base_model)
    say(f"merged {config.adapter} into its base model: full model written to {config.output}")
    return 0


def run_tiny_example(config: TinyExampleConfig) -> int:
    """`poft tiny-example --output DIR`: a tiny model and a small scored dataset for trying `poft train`."""
    from .example import write_tiny_example

    paths = write_tiny_example(config.output, n_rows=config.rows, seed=config.seed)
    say(f"wrote {paths['model']} and {paths['data']}")
    return 0


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
