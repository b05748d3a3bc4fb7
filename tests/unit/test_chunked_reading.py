"""Reading in chunks (`readers.CHUNK_ROWS`, `arrow_rows.ChunkedRows`) gives the rows a one-chunk read gives:
same values, types, order, ids, fingerprints, places and bad rows, for JSON lines, JSON arrays and Parquet."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from datasets import Dataset

from poft import readers
from poft.arrow_rows import ChunkedRows, RowPlaces


def _rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        row = {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        if i % 5 == 0:
            row["id"] = f"row-{i}"
        row["weight"] = None if i < 12 else (i if i < 30 else i + 0.5)  # null, then int, then float
        rows.append(row)
    return rows


def _write_jsonl(path, rows, bad_at=()):
    with path.open("w") as f:
        for i, row in enumerate(rows):
            if i in bad_at:
                f.write("{not json\n")
            f.write(json.dumps(row) + "\n")


def _read(path, chunk_rows, monkeypatch, **options):
    monkeypatch.setattr(readers, "CHUNK_ROWS", chunk_rows)
    return readers.read_sft(str(path), **options)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_chunks_read_like_one_chunk(tmp_path, monkeypatch, suffix):
    rows = _rows(50)
    path = tmp_path / f"rows{suffix}"
    if suffix == ".jsonl":
        _write_jsonl(path, rows, bad_at={7, 33})
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        Dataset.from_list(
            [{**r, "weight": None if r["weight"] is None else float(r["weight"])} for r in rows]
        ).to_parquet(str(path))
    whole = _read(path, 10_000, monkeypatch, on_bad_row="skip")
    chunked = _read(path, 7, monkeypatch, on_bad_row="skip")
    assert chunked.dataset.to_list() == whole.dataset.to_list()
    assert chunked.dataset.features == whole.dataset.features
    assert list(chunked.where) == list(whole.where)
    assert chunked.bad == whole.bad and chunked.n_rows_in == whole.n_rows_in
    assert len(chunked.dataset) == 50
    assert chunked.dataset.cache_files  # memory-mapped from files, not held in memory
    if suffix == ".jsonl":
        assert [b["row"] for b in chunked.bad] == ["line 8", "line 35"]
        assert chunked.where[7] == "line 9"  # the row after the first bad line
        assert chunked.dataset.features["weight"].dtype == "float64"  # null, int, then float chunks


def test_a_column_whose_type_changes_between_chunks_is_named(tmp_path, monkeypatch):
    rows = _rows(30)
    for i, row in enumerate(rows):
        row["weight"] = i if i < 21 else f"w{i}"  # numbers, then text (from a chunk start)
    path = tmp_path / "rows.jsonl"
    _write_jsonl(path, rows)
    with pytest.raises(
        ValueError, match=r"column 'weight' holds int64 values .* and string values .*line 22"
    ):
        _read(path, 7, monkeypatch)


def test_an_error_counts_every_bad_row_and_a_skip_keeps_the_rest(tmp_path, monkeypatch):
    rows = _rows(40)
    for i in (3, 21, 38):
        rows[i]["messages"] = [{"role": "user", "content": "no answer"}]
    path = tmp_path / "rows.jsonl"
    _write_jsonl(path, rows)
    with pytest.raises(readers.RowError, match="3 of 40 rows"):
        _read(path, 7, monkeypatch)
    kept = _read(path, 7, monkeypatch, on_bad_row="skip")
    assert len(kept.dataset) == 37 and kept.where[3] == "line 5"


def test_a_file_changed_between_passes_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    _write_jsonl(path, _rows(10))
    raw = readers.read_rows(str(path))
    with path.open("a") as f:
        f.write(json.dumps(_rows(1)[0]) + "\n")
    with pytest.raises(ValueError, match="changed while it was read"):
        list(raw.iter_rows(["messages"]))


def test_chunked_rows_are_memory_mapped_beyond_one_chunk():
    parts = ChunkedRows("data")
    for start in range(0, 30, 10):
        parts.add(Dataset.from_dict({"x": list(range(start, start + 10))}), f"row {start}")
    merged = parts.finish()
    assert merged["x"] == list(range(30))
    assert all(f["filename"] for f in merged.cache_files)  # on disk, not in memory


def test_row_places_say_line_or_row():
    places = RowPlaces(np.array([3, 9, 12]), "line")
    assert places[1] == "line 9" and list(places.select([2, 0])) == ["line 12", "line 3"]


def test_working_folders_of_a_killed_process_are_removed_by_the_next(tmp_path, monkeypatch):
    import subprocess
    import sys

    from poft import arrow_rows

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    orphan = tmp_path / f"poft-rows-{int(dead.stdout)}-abc"
    orphan.mkdir()
    (orphan / "rows-00000.arrow").write_bytes(b"x")
    living = tmp_path / f"poft-rows-{os.getpid()}-def"  # this process: kept
    living.mkdir()
    monkeypatch.setattr(arrow_rows.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(arrow_rows, "_WORKDIRS", [])
    made = arrow_rows.private_workdir()
    assert not orphan.exists() and living.exists() and made.parent == tmp_path
    assert made.name.startswith(f"poft-rows-{os.getpid()}-")
