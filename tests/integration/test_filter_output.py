"""`poft filter` writes its output as a unit: a non-empty --output is refused unless --overwrite (which
replaces the old folder only once the new one is complete); a full disk or a kill leaves nothing at --output
that a later command could take for a result; one writer at a time; the score column read through Arrow."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from datasets import Dataset, load_from_disk
from fixtures.scoring import score, write_rows  # tests/ is on sys.path

from poft.cli import main
from poft.filtering import numeric_column
from poft.inspection import inspect_scores
from poft.locks import output_lock, replacement_lock


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model):
    """A finished `poft score` folder of 24 rows."""
    root = tmp_path_factory.mktemp("filter-output")
    write_rows(root / "rows.jsonl", 24)
    score(root / "rows.jsonl", [f"chatml={tiny_model('chatml', seed=1)}"], root / "scores", progress=False)
    return root / "scores"


def filter_argv(source: Path, output: Path, *extra: str) -> list[str]:
    return ["filter", str(source), "--keep-top", "0.5", "--output", str(output), *extra]


def last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def hidden_siblings(output: Path) -> list[str]:
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}."))


def test_filter_onto_a_finished_score_folder_is_refused_unless_overwrite(scored, tmp_path, capsys):
    """Was: exit 0, leaving the old manifest.json, scoring_config.json and shards/ beside the filtered rows
    (then `poft inspect` failed on a column that does not exist)."""
    target = tmp_path / "x"
    shutil.copytree(scored, target)
    before = sorted(p.name for p in target.iterdir())
    assert "manifest.json" in before and "shards" in before
    held = [name for name in before if name != ".poft.lock"]  # poft score's lock file is not listed

    assert main(filter_argv(scored, target)) == 1
    assert last_error(capsys) == (
        f"poft filter: error: --output {target} is not empty (it holds {', '.join(held[:4])} and "
        f"{len(held) - 4} more): choose a new folder, or pass --overwrite to replace it once the new one is "
        "written"
    )
    assert sorted(p.name for p in target.iterdir()) == before  # untouched

    assert main(filter_argv(scored, target, "--overwrite")) == 0
    fresh = tmp_path / "fresh"
    assert main(filter_argv(scored, fresh)) == 0
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in fresh.iterdir())
    assert not (target / "manifest.json").exists() and not (target / "shards").exists()
    assert load_from_disk(str(target)).to_list() == load_from_disk(str(fresh)).to_list()
    assert len(load_from_disk(str(target))) == 12
    inspect_scores(target, tmp_path / "audit", k=1)  # the filtered folder can be audited
    assert hidden_siblings(target) == [] and hidden_siblings(fresh) == []


def test_overwrite_never_deletes_the_input(scored, tmp_path, capsys):
    outer = tmp_path / "outer"
    shutil.copytree(scored, outer / "scores")
    assert main(filter_argv(outer / "scores", outer, "--overwrite")) == 1
    assert f"--overwrite {outer} would delete the input {outer / 'scores'}, which is inside it" in last_error(
        capsys
    )
    assert (outer / "scores" / "manifest.json").is_file()


def failing_save(monkeypatch, after_bytes: int = 0):
    """`Dataset.save_to_disk` that writes a cut `.arrow` file, then fails as a full disk does."""

    def save_to_disk(self, path, *args, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"\0" * after_bytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Dataset, "save_to_disk", save_to_disk)


def test_a_full_disk_leaves_nothing_at_output_and_names_it(scored, tmp_path, monkeypatch, capsys):
    """Was: "No space left on device" naming no path, and a 0-byte `.arrow` at --output that `poft train`
    then read as "File is too small: 0"."""
    out = tmp_path / "top"
    failing_save(monkeypatch)
    assert main(filter_argv(scored, out)) == 1
    assert last_error(capsys) == (
        f"poft filter: error: cannot write the filtered rows to {out}: No space left on device; nothing was "
        "left there (free some space, then run the same command again)"
    )
    assert not out.exists() and hidden_siblings(out) == []


def test_a_full_disk_keeps_the_old_folder_when_overwriting(scored, tmp_path, monkeypatch, capsys):
    out = tmp_path / "top"
    assert main(filter_argv(scored, out)) == 0
    old = load_from_disk(str(out)).to_list()
    failing_save(monkeypatch, after_bytes=100)
    assert main(filter_argv(scored, out, "--overwrite")) == 1
    assert f"cannot write the filtered rows to {out}: No space left on device" in last_error(capsys)
    monkeypatch.undo()
    assert load_from_disk(str(out)).to_list() == old and hidden_siblings(out) == []


KILLED_FILTER = """
import os, signal, sys
from pathlib import Path
from datasets import Dataset
from poft.cli import main

def save_to_disk(self, path, *args, **kwargs):  # killed while the rows are written
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)

Dataset.save_to_disk = save_to_disk
main(sys.argv[1:])
"""


def test_a_killed_filter_leaves_only_hidden_siblings_that_the_next_run_removes(scored, tmp_path):
    out = tmp_path / "top"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_FILTER, *filter_argv(scored, out)], capture_output=True, env=env
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists()  # nothing at --output to take for a result
    left = hidden_siblings(out)  # hidden: the cut temporary folder and the (released) lock file
    assert len(left) == 2 and left[0].startswith(".top.poft-tmp-") and left[1] == ".top.poft.lock", left
    assert (out.parent / left[0] / "data-00000-of-00001.arrow").read_bytes() == b"half"
    assert main(filter_argv(scored, out)) == 0
    assert len(load_from_disk(str(out))) == 12 and hidden_siblings(out) == []


def test_a_second_writer_of_the_output_is_refused(scored, tmp_path, capsys):
    """Another `poft filter` into the same --output, or a training run writing into it, is named."""
    out = tmp_path / "top"
    with replacement_lock(out, command="poft filter"):
        assert main(filter_argv(scored, out)) == 1
    assert last_error(capsys).startswith(
        f"poft filter: error: {out} is in use by `poft filter` (pid {os.getpid()}"
    )
    assert not out.exists()
    run = tmp_path / "run"
    with output_lock(run, command="poft train"):
        assert main(filter_argv(scored, run, "--overwrite")) == 1
    assert last_error(capsys).startswith(f"poft filter: error: {run} is in use by `poft train` (pid ")
    assert run.is_dir()


def test_numeric_column_reads_through_arrow_with_nulls_as_nan():
    data = Dataset.from_dict({"s": [0.5, None, 2.0, float("nan")], "n": [1, None, 3, 4], "t": list("abcd")})
    np.testing.assert_array_equal(numeric_column(data, "s"), [0.5, np.nan, 2.0, np.nan])
    np.testing.assert_array_equal(numeric_column(data, "n"), [1.0, np.nan, 3.0, 4.0])
    np.testing.assert_array_equal(numeric_column(data.select([3, 0]), "n"), [4.0, 1.0])  # selected rows
    assert numeric_column(data.select([]), "s").shape == (0,)
    with pytest.raises(ValueError, match="--by 't' is not a numeric column; numeric columns: \\['s', 'n'\\]"):
        numeric_column(data, "t")


def test_numeric_column_of_a_million_rows_allocates_no_python_object_per_row():
    """A Python list of 10^6 floats costs ~32 MB (list + float objects); the float64 array 8 MB."""
    n = 1_000_000
    values = pa.array(np.arange(n, dtype=np.float64), mask=np.arange(n) % 10 == 0)
    data = Dataset(pa.table({"ref_score": values}))
    tracemalloc.start()
    column = numeric_column(data, "ref_score")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.isnan(column[::10]).all() and column[1] == 1.0 and column[-1] == n - 1
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MiB"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 64 KiB tmpfs; skipped where mounting is not allowed (no root / no CAP_SYS_ADMIN)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_real_full_disk_leaves_nothing_at_output_then_more_space_works(tmp_path, small_tmpfs, capsys):
    """Rows that do not fit in 64 KiB: the real ENOSPC (from Arrow's writer) is named with --output."""
    answer = "the quick brown fox jumps over the lazy dog " * 4
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant",
             "content": answer}], "ref_score": float(i)} for i in range(2000)]  # fmt: skip
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "in"))
    out = small_tmpfs / "top"
    argv = ["filter", str(tmp_path / "in"), "--keep-top", "1.0", "--output", str(out)]
    assert main(argv) == 1
    line = last_error(capsys)
    assert line.startswith(f"poft filter: error: cannot write the filtered rows to {out}: "), line
    assert "No space left on device" in line and "nothing was left there" in line
    assert list(small_tmpfs.iterdir()) == []  # no cut .arrow file, no temporary, no lock file
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)  # space freed
    assert main(argv) == 0
    assert load_from_disk(str(out))["id"] == [r["id"] for r in rows]
