"""A model where data is expected, and a GGUF file by its content: told apart before a library guesses.

`datasets` reads a model folder given as a dataset as a folder of data files and fails with
"DatasetGenerationError" (on its config.json), and transformers reads a GGUF file whose name does not end in
`.gguf` as a JSON config ("not a valid JSON file"). Both are decided here from the files themselves, with
nothing heavy imported, so any command (`poft inspect`, `filter`, `train`, `score`) can say what the path is.
A GGUF file cut short (a download stopped early) fails in transformers as numpy's "cannot reshape array";
`gguf_problem` reads the file's header and tensor table and says how many bytes they need.
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


class _CutShort(Exception):
    """The file ended inside its GGUF header."""


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value types
_STRING, _ARRAY = 8, 9


def _read(file, size: int) -> bytes:
    data = file.read(size)
    if len(data) < size:
        raise _CutShort
    return data


def _number(file, size: int = 8) -> int:
    return int.from_bytes(_read(file, size), "little")


def _skip_value(file, kind: int) -> None:
    """Past one GGUF metadata value of type `kind` (a string, an array, or a fixed-size scalar)."""
    if kind == _STRING:
        _read(file, _number(file))
    elif kind == _ARRAY:
        item, count = _number(file, 4), _number(file)
        if item in _SCALAR_SIZES:  # a seek past the end is caught by the next read
            file.seek(_SCALAR_SIZES[item] * count, 1)
        else:
            for _ in range(count):
                _skip_value(file, item)
    elif kind in _SCALAR_SIZES:
        _read(file, _SCALAR_SIZES[kind])
    else:
        raise ValueError(f"unknown metadata type {kind}")


def _tensor_bytes(dims: list[int], kind: int) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    elements = 1
    for d in dims:
        elements *= d
    return elements // block * size


def gguf_bytes_needed(path: str | Path) -> int:
    """How many bytes a GGUF file's header and tensor table say it holds (raises _CutShort when the file ends
    inside the header itself). Little-endian GGUF v2/v3, as llama.cpp writes."""
    with open(path, "rb") as file:
        if _read(file, 4) != GGUF_MAGIC:
            raise ValueError("not a GGUF file (its first bytes are not 'GGUF')")
        _number(file, 4)  # version
        n_tensors, n_values = _number(file), _number(file)
        alignment = 32
        for _ in range(n_values):
            key = _read(file, _number(file))
            kind = _number(file, 4)
            if key == b"general.alignment" and kind == 4:
                alignment = _number(file, 4)
            else:
                _skip_value(file, kind)
        end = 0
        for _ in range(n_tensors):
            _read(file, _number(file))  # name
            dims = [_number(file) for _ in range(_number(file, 4))]
            kind, offset = _number(file, 4), _number(file)
            end = max(end, offset + _tensor_bytes(dims, kind))
        start = file.tell()
    return -(-start // alignment) * alignment + end


def gguf_problem(path: str | Path) -> str | None:
    """None when a GGUF file is as long as its header says; otherwise what is wrong, for an error message."""
    size = Path(path).stat().st_size
    try:
        needed = gguf_bytes_needed(path)
    except _CutShort:
        return f"looks cut short ({size} bytes: it ends inside its own header)"
    except (ValueError, KeyError, ImportError, OverflowError) as e:
        return f"is not a readable GGUF file ({e})"
    if needed > size:
        return f"looks cut short ({size} bytes; its header and tensor table need {needed})"
    return None
