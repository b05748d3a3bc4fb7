"""Resumable scoring records: shards of finished rows, the run's identity, and atomic JSON writes.

`poft score` may be killed at any moment (SIGKILL, pre-emption, out-of-memory). Everything it finishes is
written as a small shard file naming the row indices it covers; a shard appears on disk all at once
(temporary file, fsync, rename) or not at all, so a restarted run trusts every shard it sees and skips
those rows. Shards never overlap within one run, and a restarted run only schedules rows that no shard
covers, so the merged output holds every row exactly once.

A run is identified by `scoring_config.json` (dataset fingerprint, models with revisions and template
hashes, max length, dtype). A second run with the same output folder and a different identity is refused
instead of mixing scores of two setups. Settings that do not change a score (batch size, normalisation,
number of processes) may change between restarts.

The scored dataset is complete only when `manifest.json` exists: finalising deletes it, writes the dataset,
then writes it again atomically, so a kill or a full disk while the dataset is written leaves a folder that
readers refuse (`data.load_raw_dataset`) and that a re-run finalises again.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

import numpy as np

SHARDS_DIR = "shards"
CONFIG_FILE = "scoring_config.json"
MANIFEST_FILE = "manifest.json"  # written last: its presence means the scored dataset is complete


class RunMismatchError(ValueError):
    """The output folder holds work from a run with different data, models, templates or settings."""


class OutputWriteError(OSError):
    """The output folder could not be written (disk full, no permission, not a folder); earlier work is kept."""


def write_json_atomic(path: Path, obj: object) -> None:
    """Write JSON so that readers see the old file or the complete new one, never a partial one.

    A failed write (disk full, permission) removes its temporary file and raises OutputWriteError naming
    the file; files written before it are untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # the temporary may not exist (or its folder cannot be made)
            tmp.unlink(missing_ok=True)
        raise OutputWriteError(e.errno, f"cannot write {path}: {e.strerror or e}") from e


def write_shard(
    output: Path,
    alias: str,
    rows: list[int],
    logp_sums: list[float],
    n_tokens: list[int],
    truncated: list[bool],
    *,
    tokens: int,
    seconds: float,
    rank: int = 0,
) -> Path:
    """Record finished rows of one model: row indices with their log-prob sums, token counts, truncation."""
    name = f"rank{rank}-row{min(rows):09d}-{uuid.uuid4().hex[:8]}.json"
    path = Path(output) / SHARDS_DIR / alias / name
    record = {
        "rows": [int(r) for r in rows],
        "logp_sum": [float(s) for s in logp_sums],
        "n_tokens": [int(n) for n in n_tokens],
        "truncated": [bool(t) for t in truncated],
        "tokens": int(tokens),
        "seconds": float(seconds),
    }
    try:
        write_json_atomic(path, record)
    except OutputWriteError as e:
        raise OutputWriteError(
            e.errno, f"{e.strerror}. Shards written before it are kept: fix the cause and re-run the same "
            "command to resume where it stopped"
        ) from e  # fmt: skip
    return path


def shard_files(output: Path, alias: str) -> list[Path]:
    """Finished shard files of one model (temporary files of a killed writer are ignored)."""
    folder = Path(output) / SHARDS_DIR / alias
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith(".tmp-"))


def finished_rows(output: Path, alias: str) -> set[int]:
    """Row indices some shard of this model already covers."""
    done: set[int] = set()
    for path in shard_files(output, alias):
        done.update(json.loads(path.read_text())["rows"])
    return done


def merge_shards(output: Path, alias: str, n_rows: int) -> dict[str, np.ndarray]:
    """All shards of one model as arrays indexed by row; rows no shard covers have n_tokens = -1.

    A row covered twice (only possible if two runs shared a folder at the same time) keeps its first
    record; the scores are identical up to batching noise, so this is reported, not fatal.
    """
    logp = np.full(n_rows, np.nan, dtype=np.float64)
    count = np.full(n_rows, -1, dtype=np.int64)
    truncated = np.zeros(n_rows, dtype=bool)
    duplicates = 0
    for path in shard_files(output, alias):
        record = json.loads(path.read_text())
        for r, s, n, t in zip(
            record["rows"], record["logp_sum"], record["n_tokens"], record["truncated"], strict=True
        ):
            if count[r] >= 0:
                duplicates += 1
                continue
            logp[r], count[r], truncated[r] = s, n, t
    if duplicates:
        print(
            f"poft: {alias}: {duplicates} rows were scored twice (two runs shared {output}?); kept one copy each"
        )
    return {"logp_sum": logp, "n_tokens": count, "truncated": truncated}


def remove_stale_temporaries(output: Path) -> None:
    """Delete half-written shard and manifest files left by a killed run (before any process writes)."""
    for path in (Path(output) / SHARDS_DIR).rglob(".tmp-*"):
        path.unlink(missing_ok=True)
    for path in Path(output).glob(f".tmp-*-{MANIFEST_FILE}"):
        path.unlink(missing_ok=True)


def check_run_config(output: Path, config: dict, *, write: bool) -> None:
    """Refuse to continue a run with a different identity; record the identity of a new run."""
    path = Path(output) / CONFIG_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != config:
            diffs = [k for k in sorted(set(previous) | set(config)) if previous.get(k) != config.get(k)]
            detail = "; ".join(f"{k}: was {previous.get(k)!r}, now {config.get(k)!r}" for k in diffs)
            raise RunMismatchError(
                f"{output} holds scores from a different run ({detail}). Scores of different datasets, "
                "models, templates or max lengths are never mixed: use a new --output folder or delete this one."
            )
    elif write:
        write_json_atomic(path, config)
