"""Built assets, cached under OUTPUT/assets/<key>/: the target's tokenizer and the aligned models.

Aligned models stand in for the paper's zephyr / Llama-3-Instruct / Yi-Chat: tiny causal LMs trained by
plain SFT (PoFTTrainer, objective='sft') on CLEAN task data that shares no prompt with the target's
training set, with different seeds. Model "a" shares the target's tokenizer and ChatML template; model
"b" has its own BPE vocabulary and a Llama-3-style template, so its scores are per-token means under a
different tokenisation (what `poft score`'s normalisation must cope with). Both are saved as ordinary
model folders (config, weights, tokenizer, chat template) and are used only through `poft score`.

The key hashes every setting they depend on (DemoConfig.asset_key); `--rebuild` removes the folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..tiny import build_model, build_tokenizer
from .config import DemoConfig
from .console import Progress
from .evaluate import HeldOut, evaluate
from .parallel import run_jobs
from .tasks import Splits, corpus, make_splits
from .train import steps_per_run, train

ALIGNED = (("a", "chatml", 1), ("b", "llama3", 2))  # (alias, template family, seed)


@dataclass(frozen=True)
class Assets:
    folder: Path
    target_tokenizer: PreTrainedTokenizerBase
    aligned: dict[str, Path]  # alias -> model folder
    aligned_metrics: dict[str, dict]  # alias -> held-out metrics of the aligned model


def asset_steps(config: DemoConfig) -> int:
    return len(ALIGNED) * steps_per_run(config.n_aligned, config.batch_size, config.aligned_epochs)


def asset_folder(config: DemoConfig) -> Path:
    return Path(config.output) / "assets" / config.asset_key()


def build_assets(config: DemoConfig, splits: Splits, progress: Progress) -> Assets:
    """Load the cached assets, or build them (tokenizers, then the aligned models in parallel) and cache them."""
    folder = asset_folder(config)
    if config.rebuild and folder.exists():
        shutil.rmtree(folder)
    done = folder / "assets.json"
    if done.exists():
        info = json.loads(done.read_text())
        progress.write(f"poft demo: reusing aligned models from {folder} (--rebuild to redo)")
        progress.bar.update(asset_steps(config))
        return _load(folder, info)
    text = corpus(splits.aligned + splits.train)
    target_tok = build_tokenizer("chatml", text, vocab_size=config.vocab_size)
    target_tok.save_pretrained(folder / "target-tokenizer")
    for alias, family, _ in ALIGNED:
        tok = target_tok if family == "chatml" else build_tokenizer(family, text, config.aligned_vocab_size)
        tok.save_pretrained(folder / f"aligned-{alias}")
    progress.describe("training the aligned models")
    jobs = [(config, alias, family, seed, folder) for alias, family, seed in ALIGNED]
    metrics = dict(
        run_jobs(_train_aligned, jobs, config.workers, progress, on_done=lambda r: _report(r, progress))
    )
    shutil.rmtree(folder / "work", ignore_errors=True)
    done.write_text(json.dumps({"aligned_metrics": metrics, "config": config.to_dict()}, indent=1))
    return _load(folder, {"aligned_metrics": metrics})


def _train_aligned(job: tuple, sink) -> tuple[str, dict]:
    """Worker: plain SFT of one aligned model on the clean aligned split; saves it; held-out metrics."""
    config, alias, family, seed, folder = job
    splits = make_splits(config.data_seed, config.n_train, config.n_aligned, config.n_test)
    tok = AutoTokenizer.from_pretrained(folder / f"aligned-{alias}")
    model = build_model(tok, hidden_size=config.hidden_size, num_layers=config.num_layers, seed=seed)
    rows = Dataset.from_list([{"messages": e.messages()} for e in splits.aligned])
    train(
        model, tok, rows, objective="sft", epochs=config.aligned_epochs, seed=seed, config=config,
        work_dir=folder / "work" / alias, sink=sink,
    )  # fmt: skip
    model.save_pretrained(folder / f"aligned-{alias}")
    return alias, {
        "family": family,
        "vocab": len(tok),
        **evaluate(model, tok, HeldOut.build(tok, splits.test), seed=seed),
    }


def _report(result: tuple[str, dict], progress: Progress) -> None:
    alias, m = result
    progress.write(
        f"  aligned model {alias} ({m['family']} template, {m['vocab']} tokens): held-out accuracy "
        f"{m['accuracy']:.3f}, sampled accuracy {m['sampled_accuracy']:.3f}, clean NLL {m['clean_nll']:.3f}"
    )


def _load(folder: Path, info: dict) -> Assets:
    aligned = {alias: folder / f"aligned-{alias}" for alias, _, _ in ALIGNED}
    return Assets(
        folder, AutoTokenizer.from_pretrained(folder / "target-tokenizer"), aligned, info["aligned_metrics"]
    )
