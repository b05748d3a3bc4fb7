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

The output is written as a unit: rows and `filter.json` go to a hidden temporary sibling of `--output`
(`.NAME.poft-tmp-*`), which is renamed into place once complete. A non-empty `--output` is refused unless
`--overwrite`, and then the old folder is replaced only after the new one is complete. A failed write (a
full disk) removes the temporary folder and names `--output` and the cause; a killed run leaves only hidden
siblings, which the next `poft filter` into that folder removes. One `poft filter` (or training run) at a
time writes a folder (`poft.locks`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

from .console import say
from .locks import LOCK_FILE, output_lock, replacement_lock


class FilterOutputError(OSError):
    """The filtered rows could not be written to `--output` (disk full, permission): nothing was left there."""


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
    # through Arrow, one float64 array (no Python object per row); `select`ed rows are honoured
    values = dataset.with_format("arrow")[column]
    return pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False)


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


def check_output(output: str | Path, source: str | Path, *, overwrite: bool) -> None:
    """Refuse an `--output` whose files would be mixed with the filtered rows or whose loss would lose the
    input: the input itself, a file, a non-empty folder without `overwrite`, a folder holding the input."""
    output, source = Path(output), Path(source)
    if output.resolve() == source.resolve():
        raise ValueError("--output must differ from the input")
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file, not a folder")
    held = sorted(p.name for p in output.iterdir() if p.name != LOCK_FILE) if output.is_dir() else []
    if held and not overwrite:
        names = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        raise ValueError(
            f"--output {output} is not empty (it holds {names}): choose a new folder, or pass --overwrite to "
            "replace it once the filtered rows are written"
        )
    if held and source.resolve().is_relative_to(output.resolve()):
        raise ValueError(f"--overwrite {output} would delete the input {source}, which is inside it")


def siblings(output: Path, kind: str) -> list[Path]:
    """Hidden siblings of `output` a `poft filter` into it writes: temporary ("tmp") or replaced ("old")."""
    return sorted(output.parent.glob(f".{output.name}.poft-{kind}-*"))


def sibling(output: Path, kind: str) -> Path:
    return output.parent / f".{output.name}.poft-{kind}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def filter_output(output: str | Path, source: str | Path, *, overwrite: bool) -> Iterator[None]:
    """Claim `--output` for one `poft filter` run before the input is read: refuse what `check_output`
    refuses, lock the folder against other writers (other filters, a training run into it), and remove the
    hidden siblings that a killed `poft filter` into it left."""
    output = Path(output)
    check_output(output, source, overwrite=overwrite)
    with contextlib.ExitStack() as stack:
        held = stack.enter_context(replacement_lock(output, command="poft filter"))
        if output.is_dir():  # a run writing into it now (poft train, poft score) must end first
            stack.enter_context(output_lock(output, command="poft filter"))
        if held:  # no live run owns them (on a filesystem without locks that cannot be known)
            for stale in siblings(output, "tmp") + siblings(output, "old"):
                shutil.rmtree(stale, ignore_errors=True)
        yield


def write_error(output: Path, e: OSError) -> FilterOutputError:
    """One line naming `--output` and the cause; `[Errno 28]` becomes its sentence (`exits.error_line`)."""
    cause = e.strerror or str(e)
    text = f"cannot write the filtered rows to {output}: {cause}; nothing was left there"
    return FilterOutputError(e.errno, text) if e.errno is not None else FilterOutputError(text)


def write_folder(rows: Dataset, report: dict, output: Path) -> None:
    """Write the rows and `filter.json` to a temporary sibling, then rename it into place (replacing the
    old folder only now): a failed or killed write leaves nothing at `output` to take for a result."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling(output, "tmp")
    try:
        rows.save_to_disk(str(tmp))
        (tmp / "filter.json").write_text(json.dumps(report, indent=2) + "\n")
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise write_error(output, e) from e
        raise
    replace_folder(tmp, output)


def replace_folder(new: Path, output: Path) -> None:
    """Rename `new` to `output`; an existing `output` is moved aside first and removed after."""
    old = sibling(output, "old") if output.exists() else None
    try:
        if old:
            os.rename(output, old)
        os.rename(new, output)
    except OSError as e:
        if old and old.exists() and not output.exists():
            os.rename(old, output)  # put the old folder back
        shutil.rmtree(new, ignore_errors=True)
        raise write_error(output, e) from e
    if old:
        shutil.rmtree(old, ignore_errors=True)


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
