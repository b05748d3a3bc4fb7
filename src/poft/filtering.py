"""`poft filter`: keep the best-scored rows, by `ref_score` or any numeric column.

The paper's filtering study keeps the top x% of the data by r_ref (SFT peaks near 40%) and shows that
PoFT stacks with other filters (IFD, Instag, Deita); those scores come from other tools, so any numeric
column can rank the rows. The result is a `save_to_disk` folder that `poft train` reads directly.

Decisions, printed and recorded in `filter.json`:
- rows whose score is missing or not finite (NaN: the response was truncated away when scoring) are
  never kept, and `--keep-top` is a fraction of the rows that have a score;
- `--keep-top F` keeps round(F x n) rows (halves round up); ties at the cut are broken by input order
  (earlier rows first), so the same input always gives the same output;
- kept rows stay in their input order (filtering never shuffles the data).

The output is written as a unit (`poft.outputs`, as `poft merge` writes its model): rows and `filter.json`
go to a hidden temporary sibling of `--output` (`.NAME.poft-tmp-*`), which is renamed into place once
complete. A non-empty `--output` is refused unless `--overwrite`, and then the old folder is replaced only
after the new one is complete. A failed write (a full disk) removes the temporary folder and names `--output`
and the cause; a killed run leaves only hidden siblings, which the next run into that folder removes. One
`poft filter` (or training run) at a time writes a folder (`poft.locks`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from datasets import Dataset

from .arrow_rows import float_column
from .console import say
from .outputs import check_output, written_as_unit


def select_rows(
    scores: np.ndarray, *, keep_top: float | None = None, min_score: float | None = None
) -> np.ndarray:
    """Indices of the kept rows, ascending. Exactly one of keep_top (fraction in (0, 1]) or min_score."""
    if (keep_top is None) == (min_score is None):
        raise ValueError("give exactly one of keep_top (a fraction) or min_score")
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(scores))
    if min_score is not None:
        return finite[scores[finite] >= min_score]
    if not 0.0 < keep_top <= 1.0:
        raise ValueError(f"keep_top must be a fraction in (0, 1], got {keep_top}")
    n_keep = math.floor(keep_top * len(finite) + 0.5)
    # highest score first; equal scores in input order (lexsort: last key is the primary one)
    ranked = finite[np.lexsort((finite, -scores[finite]))]
    return np.sort(ranked[:n_keep])


def numeric_column(dataset: Dataset, column: str) -> np.ndarray:
    """A column as float64 (None -> NaN); refuses text and booleans with the columns that would work."""
    numeric = [
        name
        for name, feature in dataset.features.items()
        if getattr(feature, "dtype", "").startswith(("float", "int", "uint"))
    ]
    if column not in dataset.column_names:
        hint = " (run `poft score` first)" if column == "ref_score" else ""
        raise ValueError(f"no column {column!r}{hint}; numeric columns: {numeric}")
    if column not in numeric:
        raise ValueError(f"--by {column!r} is not a numeric column; numeric columns: {numeric}")
    return float_column(dataset, column)


def filter_dataset(
    dataset: Dataset,
    output: str | Path,
    *,
    by: str = "ref_score",
    keep_top: float | None = None,
    min_score: float | None = None,
    source: str = "dataset",
    overwrite: bool = False,
) -> dict:
    """Keep rows by `by`, save them to `output` (save_to_disk + filter.json, written as a unit), print and
    return the counts. A non-empty `output` is refused unless `overwrite`."""
    output = Path(output)
    check_output(output, source, overwrite=overwrite)
    scores = numeric_column(dataset, by)
    kept = select_rows(scores, keep_top=keep_top, min_score=min_score)
    report = _filter_report(scores, kept, by=by, keep_top=keep_top, min_score=min_score, source=source)
    write_folder(dataset.select(kept), report, output)
    threshold = "" if report["threshold"] is None else f" (lowest kept {by} {report['threshold']:.4f})"
    say(
        f"filter by {report['rule']}: kept {len(kept)} of {len(dataset)} rows, dropped {report['n_dropped']} "
        f"({report['n_dropped_without_score']} without a finite {by}){threshold} -> {output}"
    )
    return report


def write_folder(rows: Dataset, report: dict, output: Path) -> None:
    """Write the rows and `filter.json` as a unit (`outputs.written_as_unit`)."""
    with written_as_unit(output, "the filtered rows") as tmp:
        rows.save_to_disk(str(tmp))
        (tmp / "filter.json").write_text(json.dumps(report, indent=2) + "\n")


def _filter_report(
    scores: np.ndarray,
    kept: np.ndarray,
    *,
    by: str,
    keep_top: float | None,
    min_score: float | None,
    source: str,
) -> dict:
    """What `filter.json` records: the rule, the counts, the scores kept, and the `poft score` manifest of the
    source (so `poft inspect` on the filtered folder knows how the scores were normalised)."""
    n_unscored = int((~np.isfinite(scores)).sum())
    report = {
        "source": source,
        "by": by,
        "rule": f"top {keep_top:g} of scored rows" if keep_top is not None else f"{by} >= {min_score:g}",
        "keep_top": keep_top,
        "min_score": min_score,
        "n_rows_in": len(scores),
        "n_kept": len(kept),
        "n_dropped": len(scores) - len(kept),
        "n_dropped_without_score": n_unscored,
        "threshold": float(scores[kept].min()) if len(kept) else None,
        "mean_score_kept": float(scores[kept].mean()) if len(kept) else None,
        "mean_score_all": float(np.nanmean(scores)) if n_unscored < len(scores) else None,
    }
    score_manifest = Path(source) / "manifest.json"
    if score_manifest.is_file():
        report["score_manifest"] = json.loads(score_manifest.read_text())
    return report
