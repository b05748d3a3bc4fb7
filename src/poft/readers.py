"""The one reader: file / folder / Hub id -> rows of `messages` + `id` (+ `label`). (Being rewritten.)"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from .formats import check_json_file, normalize_conversations

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_sft_dataset(
    name_or_path: str,
    split: str = "train",
    config: str | None = None,
    *,
    format: str | None = None,
    on_bad_row: str = "error",
) -> Dataset:
    """Load SFT data and normalise it to `messages` + `id` (+ `label`), whatever format it is in.

    Sources: a local JSON/JSONL/Parquet/CSV file, a `save_to_disk` folder, or a Hub dataset id or a
    dataset repository folder (with split and config). The format (messages, ShareGPT, Alpaca, prompt/completion) is detected from the columns
    or forced with `format`; see `formats.py`. JSON files are parsed line by line first, so a malformed
    or cut line is an error naming the file and line rather than a silently short dataset.
    """
    raw, where = load_raw_dataset(name_or_path, split, config)
    return normalize_conversations(raw, format, source=name_or_path, where=where, on_bad_row=on_bad_row)


def load_raw_dataset(
    name_or_path: str, split: str, config: str | None
) -> tuple[Dataset, Callable[[int], str] | None]:
    """The rows as stored, and how to name row i in errors (a line number for JSON-lines files)."""
    path = Path(name_or_path)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(_FILE_BUILDERS)}"
            )
        where = None
        if builder == "json":
            lines = check_json_file(path)
            where = (lambda i: f"line {lines[i]}") if lines is not None else None
        return load_dataset(builder, data_files=str(path), split="train"), where
    if path.is_dir() and (path / "scoring_config.json").exists() and not (path / "manifest.json").exists():
        raise ValueError(  # `poft score` writes manifest.json last, once the scored dataset is complete
            f"{path}: `poft score` did not finish this folder (no manifest.json; killed or out of disk?). "
            "Re-run the same `poft score` command: it resumes from the finished shards and completes it"
        )
    if path.is_dir() and (
        (path / "dataset_info.json").exists()
        or (path / "dataset_dict.json").exists()
        or (path / "state.json").exists()
    ):
        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if split not in loaded:
                raise ValueError(f"{path}: no split {split!r}; it has {sorted(loaded)}")
            return loaded[split], None
        return loaded, None
    if path.is_dir():  # a dataset repository on disk (a Hub clone: data files, README `configs:`)
        return load_dataset(str(path), name=config, split=split), None
    if path.exists() or os.sep in name_or_path and not name_or_path.count("/") == 1:
        raise ValueError(f"{name_or_path}: not a data file, a `save_to_disk` folder or a dataset folder")
    return load_dataset(name_or_path, name=config, split=split), None
