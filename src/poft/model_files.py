"""A model where data is expected, and a GGUF file by its content: told apart before a library guesses.

`datasets` reads a model folder given as a dataset as a folder of data files and fails with
"DatasetGenerationError" (on its config.json), and transformers reads a GGUF file whose name does not end in
`.gguf` as a JSON config ("not a valid JSON file"). Both are decided here from the files themselves, with
nothing heavy imported, so any command (`poft inspect`, `filter`, `train`, `score`) can say what the path is.
"""

from __future__ import annotations

from pathlib import Path

GGUF_MAGIC = b"GGUF"  # the first 4 bytes of every GGUF file
MODEL_CONFIGS = ("config.json", "adapter_config.json")
MODEL_FILES = ("*.safetensors", "*.bin", "*.pt", "*.gguf", "tokenizer.json", "tokenizer_config.json")
DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json", "manifest.json")


def is_gguf(path: str | Path) -> bool:
    """Whether `path` is a file that starts as a GGUF file does, whatever its name."""
    try:
        with open(path, "rb") as file:
            return file.read(4) == GGUF_MAGIC
    except OSError:
        return False


def model_folder_files(path: str | Path) -> list[str]:
    """The files that make `path` a model (or adapter) folder: its config and weights or tokenizer; [] for
    anything else (a dataset folder, whose `save_to_disk` or `poft score` files say so, wins)."""
    folder = Path(path)
    if not folder.is_dir() or any((folder / m).exists() for m in DATASET_MARKERS):
        return []
    configs = [name for name in MODEL_CONFIGS if (folder / name).is_file()]
    if not configs:
        return []
    files = sorted({p.name for pattern in MODEL_FILES for p in folder.glob(pattern) if p.is_file()})
    return configs + files if files else []


def check_not_model_folder(path: str | Path) -> None:
    """Refuse a model folder given where rows are expected (`poft inspect`, `filter`, `train --dataset_name`),
    saying what it is and what to give instead."""
    found = model_folder_files(path)
    if found:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise ValueError(
            f"{path} is a model folder ({shown}), not a dataset: give the folder `poft score` wrote or a file "
            f"of rows (JSON/JSONL/Parquet/CSV); to score rows with this model, run `poft score --dataset ROWS "
            f"--model {path} --output DIR` first"
        )
