"""The demo's settings: one dataclass, every field with help text; `--full` and `--mini` are presets.

Default sizes were measured to finish in under 5 minutes on 2 CPU cores shared with other jobs (see
RESULTS.md): ~460k-parameter Llamas (hidden 128, 2 layers), prompts+answers of ~22 tokens, 2,000
training rows, 5 epochs; `--full` is 3 seeds x 8 epochs on the same data and aligned models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

METHODS = ("sft", "poft", "bi_poft")


@dataclass
class DemoConfig:
    """Everything that decides what `poft demo` does (the CLI exposes the commonly changed fields)."""

    output: str = field(
        default="demo_output", metadata={"help": "folder for results, plots, report and cache"}
    )
    seeds: int = field(
        default=1, metadata={"help": "training seeds 0..N-1 (noise draw, target init, data order)"}
    )
    noise_levels: tuple[float, ...] = field(
        default=(0.0, 0.3, 0.5), metadata={"help": "shares of noisy training rows, one experiment each"}
    )
    methods: tuple[str, ...] = field(default=METHODS, metadata={"help": "losses to compare (same settings)"})
    rebuild: bool = field(default=False, metadata={"help": "rebuild cached aligned models and scores"})
    data_seed: int = field(default=0, metadata={"help": "seed of the task data (prompts and splits)"})
    # data
    n_train: int = field(default=2000, metadata={"help": "target training rows (clean + noisy)"})
    n_aligned: int = field(
        default=3000, metadata={"help": "clean rows the aligned models train on (disjoint)"}
    )
    n_test: int = field(default=200, metadata={"help": "held-out test prompts"})
    char_rate: float = field(
        default=0.2, metadata={"help": "per-character edit probability in corrupted rows"}
    )
    # models
    hidden_size: int = field(default=128, metadata={"help": "hidden size of every tiny Llama"})
    num_layers: int = field(default=2, metadata={"help": "layers of every tiny Llama"})
    vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary of the target / aligned model A"})
    aligned_vocab_size: int = field(default=448, metadata={"help": "BPE vocabulary of aligned model B"})
    aligned_epochs: int = field(default=6, metadata={"help": "epochs of plain SFT for each aligned model"})
    # target training (identical for every method)
    epochs: int = field(default=5, metadata={"help": "target training epochs (evaluated after each)"})
    learning_rate: float = field(default=3e-3, metadata={"help": "peak learning rate (cosine, 5% warm-up)"})
    batch_size: int = field(default=32, metadata={"help": "rows per optimizer step"})
    beta: float = field(default=1.0, metadata={"help": "PoFT beta (paper: 1)"})
    gamma: float = field(default=0.0, metadata={"help": "PoFT gamma (paper: 0)"})
    normalization: str = field(default="token", metadata={"help": "score normalisation: token|byte|none"})
    workers: int = field(
        default=2, metadata={"help": "parallel training processes, 1 torch thread each (1 = in-process)"}
    )

    def asset_key(self) -> str:
        """Hash of the fields the aligned models depend on: a changed field builds new ones."""
        fields = ("data_seed", "n_train", "n_aligned", "n_test", "hidden_size", "num_layers", "vocab_size")
        fields += ("aligned_vocab_size", "aligned_epochs", "learning_rate", "batch_size")
        blob = json.dumps({k: getattr(self, k) for k in fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FULL = {"seeds": 3, "epochs": 8}  # same data and aligned models as the default run (cache reused)
MINI = {
    "n_train": 48,
    "n_aligned": 48,
    "n_test": 12,
    "noise_levels": (0.5,),
    "hidden_size": 32,
    "epochs": 1,
    "aligned_epochs": 1,
    "batch_size": 16,
    "workers": 1,
}
