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
readers refuse (`readers.read_rows`) and that a re-run finalises again. `finalize` does that: every model's
shards merged in row order, `ref_score` = mean of the models' normalised scores, save, fsync, manifest last.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Value

from .console import say
from .loss import normalize_scores
from .pointwise import COMBINED_WEIGHT, row_scores
from .unconditional import RENDER, uncond_alias

SHARDS_DIR = "shards"
CONFIG_FILE = "scoring_config.json"
PROVENANCE_COLUMN = "score_provenance"
MANIFEST_FILE = "manifest.json"  # written last: its presence means the scored dataset is complete
SCORE_SUFFIXES = ("_logp_sum", "_n_tokens", "_truncated")


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
        hint = "Shards written before it are kept: fix the cause and re-run the same command to resume"
        raise OutputWriteError(e.errno, f"{e.strerror}. {hint} where it stopped") from e
    return path


def shard_files(output: Path, alias: str) -> list[Path]:
    """Finished shard files of one model (temporary files of a killed writer are ignored)."""
    folder = Path(output) / SHARDS_DIR / alias
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith(".tmp-"))


def finished_mask(output: Path, alias: str, n_rows: int) -> np.ndarray:
    """done[r] is True where some shard of this model already covers row r (one byte a row)."""
    done = np.zeros(n_rows, dtype=bool)
    for path in shard_files(output, alias):
        rows = np.asarray(json.loads(path.read_text())["rows"], dtype=np.int64)
        done[rows[rows < n_rows]] = True
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
        say(f"{alias}: {duplicates} rows were scored twice (two runs shared {output}?); kept one copy each")
    return {"logp_sum": logp, "n_tokens": count, "truncated": truncated}


def remove_stale_temporaries(output: Path) -> None:
    """Delete half-written shard and manifest files left by a killed run (before any process writes)."""
    for path in (Path(output) / SHARDS_DIR).rglob(".tmp-*"):
        path.unlink(missing_ok=True)
    for path in Path(output).glob(f".tmp-*-{MANIFEST_FILE}"):
        path.unlink(missing_ok=True)


def check_run_config(output: Path, config: dict, *, write: bool) -> None:
    """Refuse to continue a run with a different identity; record the identity of a new run.

    The one change allowed is adding aligned models: a run whose `models` keep every model of the previous
    run (same aliases, same identities) and add more reuses their shards and scores only the new ones.
    """
    path = Path(output) / CONFIG_FILE
    if not path.exists():
        if write:
            write_json_atomic(path, config)
        return
    previous = json.loads(path.read_text())
    diffs = [k for k in sorted(set(previous) | set(config)) if previous.get(k) != config.get(k)]
    if diffs == ["models"] and _adds_models(previous["models"], config["models"]):
        if write:
            write_json_atomic(path, config)
        return
    if diffs:
        detail = "; ".join(f"{k}: was {previous.get(k)!r}, now {config.get(k)!r}" for k in diffs)
        raise RunMismatchError(
            f"{output} holds scores from a different run ({detail}). Scores of different datasets, "
            "models, templates or max lengths are never mixed (aligned models may only be added, with the "
            "earlier ones kept): use a new --output folder or delete this one."
        )


def _adds_models(previous: list[dict], current: list[dict]) -> bool:
    """Every earlier aligned model is still there, unchanged, and at least one is new."""
    now = {m["alias"]: m for m in current}
    return len(current) > len(previous) and all(now.get(m["alias"]) == m for m in previous)


def finalize(
    output: Path,
    dataset: Dataset,
    *,
    response_bytes: list[int],
    models: list[dict],
    run: dict,
    stats: list[dict],
    normalization: str,
    uncond: bool = False,
) -> Dataset:
    """Merge every model's shards in row order, add the score columns, save, fsync, write the manifest last.

    `models`: one manifest entry per aligned model (alias, identity, template facts); `run`: what the
    manifest records of the run besides the models (source, row counts, bad rows, settings, processes);
    `stats`: per process, per alias {"rows", "tokens", "seconds"} of this run. `uncond`: the prompt-free
    scores (shards `<alias>@uncond`) are merged too, with PMI, IFD and their combination (`_merge_uncond`).
    """
    columns: dict[str, np.ndarray] = {"response_bytes": np.asarray(response_bytes, dtype=np.int64)}
    per_model = [_merge_model(output, entry, len(dataset), columns, normalization) for entry in models]
    columns["ref_score"] = np.mean([m.pop("scores") for m in per_model], axis=0)
    unconditional = _merge_uncond(output, models, len(dataset), columns, stats) if uncond else None
    scored = _with_score_columns(dataset, columns, provenance_record(models, normalization, run["settings"]))
    previous = _read_manifest(output)
    # From here until the manifest is written again, readers refuse the folder as unfinished
    (output / MANIFEST_FILE).unlink(missing_ok=True)
    _save_dataset(scored, output)
    aliases = [m["alias"] for m in models]
    aliases += [uncond_alias(a) for a in aliases] if uncond else []
    tokens = sum(s[a]["tokens"] for s in stats for a in aliases)
    seconds = sum(max(s[a]["seconds"] for s in stats) for a in aliases)  # the slowest process per model
    throughput = _throughput(tokens, seconds, len(stats), previous)
    manifest = _manifest(scored, per_model, columns["ref_score"], normalization, run, throughput)
    if unconditional is not None:
        manifest["unconditional"] = unconditional
    write_json_atomic(output / MANIFEST_FILE, manifest)  # last: marks the folder complete
    rate = f", {tokens / seconds:,.0f} tok/s" if seconds > 0 else ""
    say(
        f"scored {len(scored)} rows with {len(models)} models -> {output} "
        f"({len(run['bad_rows'])} bad rows skipped, {tokens} tokens this run{rate})"
    )
    return scored


def _with_score_columns(dataset: Dataset, columns: dict[str, np.ndarray], provenance: str) -> Dataset:
    """The rows with the score columns (and the provenance string) added last, in place of columns of those
    names; written a batch at a time to a private working file (memory: the score arrays and one batch)."""
    from .arrow_rows import private_workdir

    replaced = [c for c in [*columns, PROVENANCE_COLUMN] if c in dataset.column_names]
    if replaced:
        say(f"replacing existing columns {replaced} with new scores")

    def add(batch: dict, indices: list[int]) -> dict:
        rows = np.asarray(indices, dtype=np.int64)
        added = {name: values[rows] for name, values in columns.items()}
        return {**added, PROVENANCE_COLUMN: [provenance] * len(rows)}

    features = dataset.features.copy()
    for name in replaced:
        del features[name]
    for name, values in columns.items():
        features[name] = Value(values.dtype.name)
    features[PROVENANCE_COLUMN] = Value("string")
    return dataset.map(
        add,
        batched=True,
        batch_size=10_000,
        with_indices=True,
        remove_columns=replaced,
        features=features,
        cache_file_name=str(private_workdir("poft-scored-") / "scored.arrow"),
        new_fingerprint=uuid.uuid4().hex,
        desc=None,
    )


def _manifest(
    scored: Dataset,
    per_model: list[dict],
    ref_score: np.ndarray,
    normalization: str,
    run: dict,
    throughput: dict,
) -> dict:
    """What `manifest.json` records: the data, each model, the settings, the counts and the throughput."""
    return {
        "dataset": {**run["dataset"], "n_rows_out": len(scored)},
        "models": per_model,
        "normalization": normalization,
        **run["settings"],
        "counts": {
            "dropped": len(run["bad_rows"]),
            "truncated": {m["alias"]: m["n_truncated"] for m in per_model},
            "ref_score_nan": int(np.isnan(ref_score).sum()),
        },
        "bad_rows": run["bad_rows"],
        "throughput": throughput,
        "columns": scored.column_names,
    }


def _save_dataset(scored: Dataset, output: Path) -> None:
    """`save_to_disk` and fsync; a failure says that every shard is kept and how to finish."""
    try:
        scored.save_to_disk(str(output))
        _sync_to_disk(output)
    except OSError as e:
        raise OutputWriteError(
            e.errno,
            f"cannot write the scored dataset to {output}: {e.strerror or e}. Every shard is kept: "
            "fix the cause and re-run the same command to finish (nothing is scored again)",
        ) from e


def _throughput(tokens: int, seconds: float, processes: int, previous: dict) -> dict:
    """The manifest's throughput: this run's tokens and scoring seconds; a run that scored nothing keeps the
    figures of the run that did."""
    if not tokens and previous.get("throughput"):
        return {
            **previous["throughput"],
            "note": "nothing was scored by the last run; figures of the run that scored",
        }
    return {
        "processes": processes,
        "tokens_this_run": tokens,
        "scoring_seconds_this_run": round(seconds, 3),  # tokenise + forward, slowest process
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
    }


def provenance_record(models: list[dict], normalization: str, settings: dict) -> str:
    """How the scores were made, as one compact JSON string stored in every scored row (`score_provenance`):
    it travels with the rows through `poft filter`, JSON-lines copies and concatenations, so training can
    refuse scores of another normalisation or a mix of runs, and see truncation the scorer did not do."""
    record = {
        "models": {m["alias"]: m["revision"] for m in models},
        "normalization": normalization,
        "max_length": settings.get("max_length"),
        "dtype": settings.get("dtype"),
    }
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def _read_manifest(output: Path) -> dict:
    path = Path(output) / MANIFEST_FILE
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):  # a manifest that cannot be read is rewritten below anyway
        return {}


def _merge_model(output: Path, entry: dict, n_rows: int, columns: dict, normalization: str) -> dict:
    """Add one model's columns (from its shards, in row order); return its manifest entry + normalised scores."""
    alias = entry["alias"]
    merged = merge_shards(output, alias, n_rows)
    missing = np.flatnonzero(merged["n_tokens"] < 0)
    if len(missing):
        raise RuntimeError(f"{alias}: {len(missing)} rows have no score (rows {missing[:5].tolist()}...)")
    for suffix, key in zip(SCORE_SUFFIXES, ("logp_sum", "n_tokens", "truncated"), strict=True):
        columns[alias + suffix] = merged[key]
    scores = (
        normalize_scores(
            torch.from_numpy(merged["logp_sum"]),
            torch.from_numpy(merged["n_tokens"]),
            normalization=normalization,
            response_bytes=torch.from_numpy(columns["response_bytes"]),
        )
        .double()
        .numpy()
    )
    scores[merged["n_tokens"] == 0] = np.nan  # the whole response was truncated away
    return {
        **entry,
        "n_truncated": int(merged["truncated"].sum()),
        "n_without_response_tokens": int((merged["n_tokens"] == 0).sum()),
        "response_tokens": int(merged["n_tokens"].sum()),
        "scores": scores,
    }


def _sync_to_disk(folder: Path) -> None:
    """fsync the dataset files and the folder before the manifest vouches for them: a kill cannot lose data
    the kernel already has, but a power cut can lose what it has not yet written out."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# ---- --uncond: the prompt-free scores (unconditional.py, pointwise.py) -------------------------------------


def _merge_uncond(output: Path, models: list[dict], n_rows: int, columns: dict, stats: list[dict]) -> dict:
    """Add each model's `<alias>_uncond_logp_sum` and `<alias>_uncond_n_tokens` (from its `<alias>@uncond`
    shards) and the rows' `ref_pmi`, `ref_ifd` and `ref_combined` to `columns`; return the manifest's
    `unconditional` record (the render, the combination, rows whose response tokens differ per model)."""
    per_model, differs = [], {}
    for entry in models:
        alias = entry["alias"]
        merged = merge_shards(output, uncond_alias(alias), n_rows)
        missing = np.flatnonzero(merged["n_tokens"] < 0)
        if len(missing):
            raise RuntimeError(
                f"{alias}: {len(missing)} rows have no prompt-free score (rows {missing[:5].tolist()}...)"
            )
        columns[f"{alias}_uncond_logp_sum"] = merged["logp_sum"]
        columns[f"{alias}_uncond_n_tokens"] = merged["n_tokens"]
        per_model.append(
            {
                "cond_sum": columns[f"{alias}_logp_sum"],
                "cond_n": columns[f"{alias}_n_tokens"],
                "uncond_sum": merged["logp_sum"],
                "uncond_n": merged["n_tokens"],
            }
        )
        differs[alias] = sum(s.get(uncond_alias(alias), {}).get("response_differs", 0) for s in stats)
    scores = row_scores(per_model, columns["ref_score"])
    columns["ref_score"] = columns.pop("ref_score")  # the per-row scores last, together
    columns.update(scores)
    return {
        "render": RENDER,
        "pmi": "mean over models of cond_logp_sum/cond_n_tokens - uncond_logp_sum/uncond_n_tokens",
        "ifd": "mean over models of (cond_logp_sum/cond_n_tokens) / (uncond_logp_sum/uncond_n_tokens)",
        "combined": f"ref_score - {COMBINED_WEIGHT:g} * ref_ifd",
        "response_differs": differs,
        "nan": {name: int(np.isnan(values).sum()) for name, values in scores.items()},
    }
