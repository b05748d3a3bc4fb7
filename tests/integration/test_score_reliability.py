"""`poft score` under faults: SIGKILLs at random moments, a kill between the dataset and its manifest, a full
disk (patched writers and a real tmpfs), an unwritable output folder, broken model folders, one of two
processes dying. Every fault ends in a clear one-line error or a resumable stop, and the re-run's output
equals an uninterrupted run's exactly (every column, every value, row order).

Exact equality is possible because every run here uses `--batch-tokens 1`: each row is scored in a batch
of its own, so its log-probs do not depend on which rows happened to share its batch after a resume.
"""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from datasets import Dataset
from fixtures.scoring import score  # tests/ is on sys.path

from poft.cli import main
from poft.readers import load_sft_dataset
from poft.shards import SHARDS_DIR, shard_files
from poft.tiny import build_tokenizer

WORDS = "the quick brown fox jumps over a lazy dog add reverse sort paris answer hello 12 30 42".split()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
N_ROWS = 400
ALIASES = ("chatml", "llama3")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model) -> dict:
    """Two tiny aligned models, N_ROWS conversations, and the uninterrupted reference output."""
    root = tmp_path_factory.mktemp("score_faults")
    models = [
        tiny_model(family, [" ".join(WORDS) * 3], vocab_size=320, seed=k) for k, family in enumerate(ALIASES)
    ]
    lines = []
    for i in range(N_ROWS):
        user = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 17))
        answer = " ".join(WORDS[(2 * i + k) % len(WORDS)] for k in range(1 + (i * 7) % 29))
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"id": f"r{i}", "messages": messages}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    data = str(root / "data.jsonl")
    reference = score(data, models, root / "reference", batch_tokens=1, rows_per_shard=4, progress=False)
    return {"root": root, "models": models, "data": data, "reference": reference.to_list()}


def score_args(setup: dict, out: Path, models: list[str] | None = None) -> list[str]:
    model_args = [a for m in models or setup["models"] for a in ("--model", m)]
    return ["score", "--dataset", setup["data"], *model_args, "--output", str(out), "--no-progress",
            "--batch-tokens", "1", "--rows-per-shard", "4"]  # fmt: skip


def assert_equals_reference(setup: dict, out: Path) -> None:
    """The folder loads through the trainer's reader and equals the uninterrupted run; no row twice."""
    scored = load_sft_dataset(str(out))
    assert scored.to_list() == setup["reference"]
    for alias in ALIASES:
        rows = [r for p in shard_files(out, alias) for r in json.loads(p.read_text())["rows"]]
        assert sorted(rows) == list(range(N_ROWS)), alias  # every row exactly once, none lost or doubled
    assert not list(out.rglob(".tmp-*"))


def assert_unfinished_is_refused(out: Path) -> None:
    assert not (out / "manifest.json").exists()
    with pytest.raises(ValueError, match="did not finish"):
        load_sft_dataset(str(out))


def n_scored(out: Path) -> int:
    return sum(len(shard_files(out, alias)) for alias in ALIASES)


def cli_in_process(args: list[str], capsys) -> tuple[int, str]:
    """`poft ...` in this process (so writers can be patched): exit code and stderr."""
    code = main(args)
    return code, capsys.readouterr().err


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    """The run ends with exactly one line `poft score: error: ...` (no traceback, nothing after it)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and lines, stderr[-2000:]
    assert lines[-1].startswith("poft score: error:"), stderr[-2000:]
    assert sum(line.startswith("poft score: error:") for line in lines) == 1, stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


# ------------------------------------------------------------------------------------------ kills


@pytest.mark.slow
def test_killed_at_random_moments_then_resumed_equals_uninterrupted(setup, tmp_path):
    """Four SIGKILLs at seeded random moments (during start-up, or after a random number of new shards, up to
    half of those left, plus a random delay), then a run to the end: the output equals the uninterrupted
    run exactly."""
    rng = random.Random(12)
    out = tmp_path / "out"
    kills = []
    for _ in range(4):
        process = subprocess.Popen([sys.executable, "-m", "poft", *score_args(setup, out)], env=ENV,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        before, deadline = n_scored(out), time.time() + 120
        left = 2 * N_ROWS // 4 - before  # shards still to write (both models)
        share = rng.choice([0.0, rng.uniform(0.05, 0.5)])  # 0: kill during start-up, before any new shard
        wait_for = max(1, int(share * left)) if share else 0
        while n_scored(out) < before + wait_for and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 1.5) if wait_for == 0 else rng.uniform(0, 0.05))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, process.stderr.read()[-2000:]
        kills.append(n_scored(out) - before)
        assert_unfinished_is_refused(out)
    print(f"new shards written before each of the {len(kills)} kills: {kills}")
    assert sum(kills) < 2 * N_ROWS // 4  # the kills left work to do
    assert sum(k > 0 for k in kills) >= 2  # and at least two of them landed mid-scoring,
    assert 0 < len(shard_files(out, ALIASES[1])) < N_ROWS // 4  # one of them while the second model scored
    done = subprocess.run([sys.executable, "-m", "poft", *score_args(setup, out)], env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert_equals_reference(setup, out)


KILL_AFTER_DATASET_WRITE = """
import os, signal, sys
import datasets
from poft.cli import main

original = datasets.Dataset.save_to_disk
def save_then_die(self, *args, **kwargs):
    original(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)  # the dataset is complete on disk, the manifest is not written
datasets.Dataset.save_to_disk = save_then_die
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_between_dataset_and_manifest_is_refused_then_finalised_by_a_rerun(setup, tmp_path, capsys):
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_DATASET_WRITE, *score_args(setup, out)], env=ENV,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / "dataset_info.json").exists()  # a complete-looking dataset ...
    assert_unfinished_is_refused(out)  # ... that no reader trusts without its manifest
    code, _ = cli_in_process(score_args(setup, out), capsys)
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["throughput"]["tokens_this_run"] == 0  # finalised from the shards, nothing re-scored
    assert_equals_reference(setup, out)


def test_save_failing_midway_leaves_an_unfinished_folder_that_a_rerun_finishes(
    setup, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    shutil.copytree(setup["root"] / "reference", out)  # a finished folder, re-finalised: the worst case

    def disk_full_midway(self, path, *args, **kwargs):
        (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"half an arrow file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Dataset, "save_to_disk", disk_full_midway)
    code, err = cli_in_process([*score_args(setup, out), "--normalization", "byte"], capsys)
    assert code == 1
    assert_one_line_error(err, "cannot write the scored dataset", "No space left on device", "re-run")
    assert_unfinished_is_refused(out)
    monkeypatch.undo()
    code, _ = cli_in_process(score_args(setup, out), capsys)
    assert code == 0
    assert_equals_reference(setup, out)


# --------------------------------------------------------------------------------- environment faults


@pytest.mark.parametrize("fault", [errno.ENOSPC, errno.EACCES], ids=["disk-full", "permission-denied"])
def test_writer_failing_after_some_shards_keeps_them_and_a_rerun_completes(
    setup, tmp_path, capsys, monkeypatch, fault
):
    """The 8th JSON write fails (scoring_config.json, then 6 shards succeed): one-line error, the 6 shards are
    intact and complete, no temporary is left, and the re-run completes to the uninterrupted output."""
    import poft.shards

    out, calls = tmp_path / "out", []
    real_open = open

    def failing_open(path, mode="r", *args, **kwargs):
        if "w" in mode:
            calls.append(path)
            if len(calls) == 8:
                handle = real_open(path, mode, *args, **kwargs)  # the temporary exists, then the write fails
                handle.close()
                raise OSError(fault, os.strerror(fault))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(poft.shards, "open", failing_open, raising=False)
    code, err = cli_in_process(score_args(setup, out), capsys)
    assert code == 1
    assert_one_line_error(err, "cannot write", f"{out / SHARDS_DIR}", os.strerror(fault), "re-run")
    shards = [p for alias in ALIASES for p in shard_files(out, alias)]
    assert len(shards) == 6 and not list(out.rglob(".tmp-*"))
    for path in shards:
        record = json.loads(path.read_text())
        assert len(record["rows"]) == len(record["logp_sum"]) == 4
    assert_unfinished_is_refused(out)
    monkeypatch.undo()
    code, err = cli_in_process(score_args(setup, out), capsys)
    assert code == 0, err
    assert_equals_reference(setup, out)


def test_output_folder_that_cannot_be_created_is_a_one_line_error(setup, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    code, err = cli_in_process(score_args(setup, tmp_path / "a-file" / "out"), capsys)
    assert code == 1
    assert_one_line_error(err, "cannot create the output folder", "Not a directory")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 64 KiB tmpfs (16 pages: a full disk after about a dozen shard files); skipped where mounting
    is not allowed (no root / no CAP_SYS_ADMIN)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_real_full_disk_then_more_space_resumes_to_the_uninterrupted_output(setup, small_tmpfs, capsys):
    out = small_tmpfs / "out"
    code, err = cli_in_process(score_args(setup, out), capsys)
    assert code == 1
    assert_one_line_error(err, "No space left on device", "re-run")
    kept = [p for alias in ALIASES for p in shard_files(out, alias)]
    assert kept and all(json.loads(p.read_text())["rows"] for p in kept)  # every kept shard is complete
    assert_unfinished_is_refused(out)
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)  # space freed
    code, err = cli_in_process(score_args(setup, out), capsys)
    assert code == 0, err
    assert_equals_reference(setup, out)


def test_broken_model_folders_are_named_and_earlier_output_is_intact(setup, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(setup["root"] / "reference", out)  # the result of an earlier, finished run
    no_tokenizer, no_template = tmp_path / "no-tokenizer", tmp_path / "no-template"
    shutil.copytree(setup["models"][0], no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (no_tokenizer / name).unlink(missing_ok=True)
    shutil.copytree(setup["models"][0], no_template)
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))

    code, err = cli_in_process(score_args(setup, out, [str(no_tokenizer)]), capsys)
    assert code == 1
    assert_one_line_error(err, f"aligned model no-tokenizer ({no_tokenizer}): could not load its tokenizer")
    code, err = cli_in_process(score_args(setup, out, [str(no_template)]), capsys)
    assert code == 1
    assert_one_line_error(err, "no-template: the tokenizer has no chat template")
    assert_equals_reference(setup, out)  # the earlier run's output is untouched


# --------------------------------------------------------------------------------------- distributed


def rank_processes(launcher: subprocess.Popen) -> dict[int, psutil.Process]:
    found = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if rank is not None:
            found[int(rank)] = child
    return found


@pytest.mark.slow
def test_one_of_two_processes_killed_ends_the_job_and_a_rerun_completes(setup, tmp_path, capsys):
    """torchrun with 2 scoring processes; rank 1 is SIGKILLed from outside once it has written shards: the job
    exits non-zero within 120 s (no hang in a collective), and a 1-process re-run gives the exact output."""
    out = tmp_path / "out"
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "poft",
    ]
    job = subprocess.Popen([*launcher, *score_args(setup, out)], env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 180
    rank1 = lambda: [p for p in shard_files(out, ALIASES[0]) if p.name.startswith("rank1-")]  # noqa: E731
    while len(rank1()) < 3 and job.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    ranks = rank_processes(job)
    assert job.poll() is None and set(ranks) == {0, 1}, job.stderr.read()[-2000:] if job.poll() else ranks
    ranks[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    try:
        job.wait(timeout=120)
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail("the job hung for 120 s after one of its processes died")
    assert job.returncode != 0
    with capsys.disabled():
        print(f"\njob exited {job.returncode} {time.time() - killed_at:.1f} s after rank 1 was killed")
    assert not ranks[0].is_running() or ranks[0].status() == psutil.STATUS_ZOMBIE  # no orphaned rank 0
    assert_unfinished_is_refused(out)
    assert 0 < n_scored(out) < 2 * N_ROWS // 4
    code, err = cli_in_process(score_args(setup, out), capsys)
    assert code == 0, err
    assert_equals_reference(setup, out)


# ------------------------------------------------------------------------------------------ stale scores


def test_poft_score_output_edited_afterwards_is_refused_by_the_trainer(setup):
    """End to end: the fingerprints `poft score` wrote stop training on rows edited (or swapped) after scoring."""
    from poft.training_data import prepare_training_dataset

    scored = load_sft_dataset(str(setup["root"] / "reference"))
    target = build_tokenizer("chatml", [" ".join(WORDS) * 3], vocab_size=300)
    kwargs = {"max_length": 128, "ref_score_column": "ref_score", "direction_column": None}
    assert len(prepare_training_dataset(scored, target, **kwargs)) == N_ROWS  # untouched: every row trains

    def edit(row: dict, index: int) -> dict:
        if index == 7:  # the answer was corrected after scoring
            row["messages"] = [row["messages"][0], {"role": "assistant", "content": "a corrected answer"}]
        return row

    with pytest.raises(ValueError, match=r"1 of 400 rows no longer match .*row 7 \(id=r7\)"):
        prepare_training_dataset(scored.map(edit, with_indices=True), target, **kwargs)
    swapped = scored.map(lambda row, i: {"ref_score": scored[(i + 1) % N_ROWS]["ref_score"],
                                         "fingerprint": scored[(i + 1) % N_ROWS]["fingerprint"]},
                         with_indices=True)  # fmt: skip  # scores joined to the neighbouring rows
    with pytest.raises(ValueError, match=r"400 of 400 rows no longer match .*row 0 \(id=r0\)"):
        prepare_training_dataset(swapped, target, **kwargs)
