"""Built assets, cached under OUTPUT/assets/<key>/: the target's tokenizer and the aligned models.

Aligned models stand in for the paper's zephyr / Llama-3-Instruct / Yi-Chat: tiny causal LMs trained by
plain SFT (PoFTTrainer, loss_type='sft') on CLEAN task data that shares no prompt with the target's
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
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from ..tiny import build_model, build_tokenizer
from .config import DemoConfig
from .evaluate import evaluate
from .tasks import Splits, corpus
from .train import Progress, steps_per_run, train

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
    """Load the cached assets, or build them (tokenizers, then each aligned model) and cache them."""
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
    metrics = {}
    rows = Dataset.from_list([{"messages": e.messages()} for e in splits.aligned])
    for alias, family, seed in ALIGNED:
        tok = target_tok if family == "chatml" else build_tokenizer(family, text, config.aligned_vocab_size)
        model = build_model(tok, hidden_size=config.hidden_size, num_layers=config.num_layers, seed=seed)
        progress.describe(f"aligned model {alias} ({family} template, {len(tok)} tokens)")
        train(
            model, tok, rows, loss_type="sft", epochs=config.aligned_epochs, seed=seed, config=config,
            work_dir=folder / "work", progress=progress,
        )  # fmt: skip
        metrics[alias] = evaluate(model, tok, splits.test, seed=seed)
        progress.write(f"poft demo: aligned model {alias} ({family}): held-out {_fmt(metrics[alias])}")
        model.save_pretrained(folder / f"aligned-{alias}")
        tok.save_pretrained(folder / f"aligned-{alias}")
    shutil.rmtree(folder / "work", ignore_errors=True)
    done.write_text(json.dumps({"aligned_metrics": metrics, "config": config.to_dict()}, indent=1))
    return _load(folder, {"aligned_metrics": metrics})


def _load(folder: Path, info: dict) -> Assets:
    aligned = {alias: folder / f"aligned-{alias}" for alias, _, _ in ALIGNED}
    return Assets(
        folder, AutoTokenizer.from_pretrained(folder / "target-tokenizer"), aligned, info["aligned_metrics"]
    )


def load_aligned_model(path: Path):
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
