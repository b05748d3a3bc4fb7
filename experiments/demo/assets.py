"""Built assets, cached under OUTPUT/assets/<key>/: the target's tokenizer, its pretrained base, the aligned models.

- base: the target's starting point, like the paper's pretrained backbones (Mistral-7B, Llama-3-8B). A tiny Llama
  pretrained from random weights on a clean corpus of the task family: conversations rendered as plain text under
  the target's chat template, next-token loss on EVERY token (prompts included), several per training row, as a
  language model is pretrained on documents. It knows the task a little; it is not instruction-tuned.
- aligned models stand in for zephyr / Llama-3-Instruct / Yi-Chat: clearly stronger than the base on the task.
  "a" = the base + SFT (PoFTTrainer, objective='sft') on clean conversations that share no prompt with the
  target's data (an instruct model made from the same base, as Llama-3-Instruct is from Llama-3); it shares the
  target's tokenizer and ChatML template. "b" has its own BPE vocabulary and a Llama-3-style template and is
  trained from random weights by SFT on the same clean rows, so its scores are per-token means under a
  different tokenisation (what `poft score`'s normalisation must cope with).
All are saved as ordinary model folders (config, weights, tokenizer, chat template); the aligned models are
used only through `poft score`. The key hashes every setting they depend on (DemoConfig.asset_key).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from poft.tiny import build_model, build_tokenizer

from .config import DemoConfig
from .console import Progress
from .evaluate import HeldOut, evaluate
from .parallel import Workers, run_jobs
from .tasks import Splits, corpus, make_splits
from .train import steps_per_run, train

ALIGNED = (("a", "chatml", 1), ("b", "llama3", 2))  # (alias, template family, seed)
BASE_SEED = 7
CONVERSATIONS_PER_DOCUMENT = 3


@dataclass(frozen=True)
class Assets:
    folder: Path
    target_tokenizer: PreTrainedTokenizerBase
    base: Path  # the target's pretrained starting point
    aligned: dict[str, Path]  # alias -> model folder
    metrics: dict[str, dict]  # "base" and each alias -> held-out metrics (validation prompts)


def splits_of(config: DemoConfig) -> Splits:
    return make_splits(
        config.data_seed, config.n_train, config.n_aligned, config.n_test, config.n_val, config.n_pretrain
    )


def _n_documents(config: DemoConfig) -> int:
    return -(-config.n_pretrain // CONVERSATIONS_PER_DOCUMENT)


def asset_steps(config: DemoConfig) -> int:
    base = steps_per_run(_n_documents(config), config.batch_size, config.pretrain_epochs)
    base *= CONVERSATIONS_PER_DOCUMENT  # a pretraining step holds that many conversations per row (train.py)
    aligned = steps_per_run(config.n_aligned, config.batch_size, config.aligned_epochs)
    return base + aligned * 3  # a: aligned_epochs from the base; b: twice as many from scratch


def asset_folder(config: DemoConfig) -> Path:
    return Path(config.output) / "assets" / config.asset_key()


def build_assets(
    config: DemoConfig, splits: Splits, progress: Progress, workers: Workers | int | None = None
) -> Assets:
    """Load the cached assets, or build them: the tokenizers, then the base and aligned model b in parallel (b does
    not start from the base), then aligned model a (from the base). Each model is the same whichever runs first."""
    folder = asset_folder(config)
    if config.rebuild and folder.exists():
        shutil.rmtree(folder)
    done = folder / "assets.json"
    if done.exists():
        info = json.loads(done.read_text())
        progress.write(f"demo: reusing the base and aligned models from {folder} (--rebuild to redo)")
        progress.bar.update(asset_steps(config))
        return _load(folder, info)
    text = corpus(splits.pretrain + splits.aligned + splits.train)
    target_tok = build_tokenizer("chatml", text, vocab_size=config.vocab_size)
    target_tok.save_pretrained(folder / "target-tokenizer")
    for alias, family, _ in ALIGNED:
        tok = target_tok if family == "chatml" else build_tokenizer(family, text, config.aligned_vocab_size)
        tok.save_pretrained(folder / f"aligned-{alias}")
    progress.describe("pretraining the base and training the aligned models")
    # b trains from scratch beside the base's pretraining; a starts from the base once it exists
    jobs = [(config, "base", folder), (config, "b", folder)]
    follow_up = lambda job, _: [(config, "a", folder)] if job[1] == "base" else []  # noqa: E731
    on_done = lambda r: _report(r, progress)  # noqa: E731
    pool = config.workers if workers is None else workers  # a pool of run_demo's, or one of its own
    built = dict(run_jobs(_build_model, jobs, pool, progress, on_done=on_done, follow_up=follow_up))
    metrics = {name: built[name] for name in ("base", *(alias for alias, _, _ in ALIGNED))}
    shutil.rmtree(folder / "work", ignore_errors=True)
    done.write_text(json.dumps({"metrics": metrics, "config": config.to_dict()}, indent=1))
    return _load(folder, {"metrics": metrics})


def _build_model(job: tuple[DemoConfig, str, Path], sink) -> tuple[str, dict]:
    """Worker: the base ("base") or one aligned model (its alias); returns (name, validation metrics)."""
    config, name, folder = job
    if name == "base":
        return name, pretrain_base(config, folder, sink)
    alias, family, seed = next(entry for entry in ALIGNED if entry[0] == name)
    return _train_aligned((config, alias, family, seed, folder), sink)


def pretrain_base(config: DemoConfig, folder: Path, sink) -> dict:
    """Next-token pretraining on every token of clean conversations, CONVERSATIONS_PER_DOCUMENT per document."""
    splits = splits_of(config)
    tok = AutoTokenizer.from_pretrained(folder / "target-tokenizer")
    conversations = [e.messages() for e in splits.pretrain]
    documents = []
    for start in range(0, len(conversations), CONVERSATIONS_PER_DOCUMENT):
        chunk = conversations[start : start + CONVERSATIONS_PER_DOCUMENT]
        text = "".join(tok.apply_chat_template(c, tokenize=False) for c in chunk)
        documents.append({"input_ids": tok(text, add_special_tokens=False).input_ids})
    model = build_model(tok, hidden_size=config.hidden_size, num_layers=config.num_layers, seed=BASE_SEED)
    train(
        model, tok, Dataset.from_list(documents), objective="sft", epochs=config.pretrain_epochs,
        learning_rate=config.asset_learning_rate, seed=BASE_SEED, config=config,
        work_dir=folder / "work" / "base", sink=sink, max_length=128, step_units=CONVERSATIONS_PER_DOCUMENT,
    )  # fmt: skip
    model.save_pretrained(folder / "base")
    tok.save_pretrained(folder / "base")
    return {"family": "chatml", "vocab": len(tok), **evaluate(model, tok, HeldOut.build(tok, splits.val))}


def _train_aligned(job: tuple, sink) -> tuple[str, dict]:
    """Worker: SFT of one aligned model on the clean aligned split (a: from the base); held-out metrics."""
    config, alias, family, seed, folder = job
    splits = splits_of(config)
    tok = AutoTokenizer.from_pretrained(folder / f"aligned-{alias}")
    if family == "chatml":
        model, epochs = AutoModelForCausalLM.from_pretrained(folder / "base"), config.aligned_epochs
    else:
        model = build_model(tok, hidden_size=config.hidden_size, num_layers=config.num_layers, seed=seed)
        epochs = 2 * config.aligned_epochs
    rows = Dataset.from_list([{"messages": e.messages()} for e in splits.aligned])
    train(
        model, tok, rows, objective="sft", epochs=epochs, learning_rate=config.asset_learning_rate, seed=seed,
        config=config, work_dir=folder / "work" / alias, sink=sink,
    )  # fmt: skip
    model.save_pretrained(folder / f"aligned-{alias}")
    return alias, {
        "family": family,
        "vocab": len(tok),
        **evaluate(model, tok, HeldOut.build(tok, splits.val)),
    }


def _report(result: tuple[str, dict], progress: Progress) -> None:
    name, m = result
    what = "base model" if name == "base" else f"aligned model {name}"
    progress.write(
        f"  {what} ({m['family']} template, {m['vocab']} tokens): validation accuracy {m['accuracy']:.3f}, "
        f"sampled accuracy {m['sampled_accuracy']:.3f}, clean NLL {m['clean_nll']:.3f}"
    )


def _load(folder: Path, info: dict) -> Assets:
    aligned = {alias: folder / f"aligned-{alias}" for alias, _, _ in ALIGNED}
    tokenizer = AutoTokenizer.from_pretrained(folder / "target-tokenizer")
    return Assets(folder, tokenizer, folder / "base", aligned, info["metrics"])
