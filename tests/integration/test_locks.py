"""One writer per output folder (`poft.locks`): a second `poft train` / `poft dpo` into a folder a run is
writing refuses at once, naming that run; a killed run leaves no lock behind; the other processes of a
multi-process run are not refused; a filesystem without locks warns and goes on."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from poft.cli import main
from poft.example import make_rows
from poft.locks import LOCK_FILE, OutputLockedError, output_lock

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
CPU = [
    "--report_to",
    "none",
    "--bf16",
    "false",
    "--save_strategy",
    "no",
    "--per_device_train_batch_size",
    "2",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("locks")
    rows = make_rows(8, seed=3)
    corpus = [m["content"] for r in rows for m in r["messages"]]
    model = tiny_model("chatml", corpus, vocab_size=300, hidden_size=32, name="model")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": model, "data": str(root / "train.jsonl"), "root": root}


def train_argv(tiny, out: Path, steps: int) -> list[str]:
    model_data = ["--model_name_or_path", tiny["model"], "--dataset_name", tiny["data"]]
    return ["train", *model_data, "--output_dir", str(out), *CPU, "--max_steps", str(steps)]


def wait_for_holder(out: Path, pid: int, process: subprocess.Popen, log: Path) -> dict:
    """The lock record of process `pid` in `out`, once it has written it (the run is then training)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            holder = json.loads((out / LOCK_FILE).read_text())
            if holder["pid"] == pid:
                return holder
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"the first run never locked {out}: {log.read_text()[-3000:]}")


def test_a_second_train_into_a_busy_folder_refuses_at_once_naming_the_first(tiny, tmp_path):
    """Two real `poft train` processes into one output_dir: the first trains (held by many steps), the
    second exits 1 before reading data or loading the model, naming the first's pid, host and command; the
    first goes on undisturbed. Once the first is SIGKILLed, its lock is gone."""
    out, log = tmp_path / "run", tmp_path / "first.log"
    with open(log, "w") as sink:
        first = subprocess.Popen(
            [sys.executable, "-m", "poft", *train_argv(tiny, out, 100_000)], stdout=sink, stderr=sink, env=ENV
        )
    try:
        holder = wait_for_holder(out, first.pid, first, log)
        assert holder["command"] == "poft train" and holder["host"] == socket.gethostname()
        start = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "poft", *train_argv(tiny, out, 1)],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
        refused_after = time.monotonic() - start  # its start-up (imports), then the refusal
        assert first.poll() is None  # the first run is still training
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 1, second.stderr[-3000:]
    assert second.stderr.strip().splitlines()[-1] == (
        f"poft train: error: {out} is in use by `poft train` (pid {first.pid} on {socket.gethostname()}, "
        f"started {holder['started']}): wait for that run to end, or choose another output folder"
    )
    assert "objective=" not in second.stdout  # refused before its data was read or its model loaded
    assert refused_after < 90, refused_after  # at once: no waiting for the first run
    assert not (out / "model.safetensors").exists()
    with output_lock(out, command="test") as held:  # SIGKILL released the first run's lock
        assert held


def test_dpo_into_a_folder_in_use_is_refused_naming_the_holder(tiny, tmp_path, capsys):
    out = tmp_path / "dpo"
    argv = [
        "dpo",
        "--model_name_or_path",
        tiny["model"],
        "--dataset_name",
        tiny["data"],
        "--output_dir",
        str(out),
    ]
    with output_lock(out, command="poft train"):
        assert main([*argv, *CPU, "--max_steps", "1"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"poft dpo: error: {out} is in use by `poft train` (pid {os.getpid()} on ")


def test_train_releases_its_lock_when_it_fails(tiny, tmp_path, capsys):
    """A run that stops with an error (here: its data file has no rows) leaves the folder free."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    argv = train_argv(tiny, tmp_path / "run", 1)
    argv[argv.index(tiny["data"])] = str(empty)
    assert main(argv) == 1
    assert f"{empty}: no rows" in capsys.readouterr().err
    assert (tmp_path / "run" / LOCK_FILE).is_file()  # it was taken
    with output_lock(tmp_path / "run", command="test") as held:
        assert held


def test_only_the_main_process_of_a_multi_process_run_takes_the_lock(tmp_path, monkeypatch):
    with output_lock(tmp_path, command="poft train") as held:  # this run's main process
        assert held
        monkeypatch.setenv("RANK", "1")  # another process of the same run
        with output_lock(tmp_path, command="poft train") as held_by_rank1:
            assert not held_by_rank1
        monkeypatch.setenv("RANK", "0")  # a second run's main process
        with pytest.raises(OutputLockedError, match="is in use by `poft train`"):
            with output_lock(tmp_path, command="poft train"):
                pass


def test_a_filesystem_without_locks_warns_and_goes_on(tmp_path, monkeypatch, capsys):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with output_lock(tmp_path / "nfs", command="poft train") as held:
        assert not held
    err = capsys.readouterr().err
    assert f"cannot lock {tmp_path / 'nfs'} (No locks available; a network filesystem without locks?)" in err
    assert "nothing stops another run from writing there at the same time" in err


def test_wait_waits_for_the_holder_instead_of_refusing(tmp_path, capsys):
    """`output_lock(..., wait=True)`: for a short step several runs do in turn (`poft score`'s finishing)."""
    import threading

    taken, order = threading.Event(), []

    def holder():
        with output_lock(tmp_path, command="poft score"):
            taken.set()
            time.sleep(0.5)
            order.append("released")

    thread = threading.Thread(target=holder)
    thread.start()
    taken.wait()
    with output_lock(tmp_path, command="poft score", wait=True) as held:
        order.append("taken")
        assert held
    thread.join()
    assert order == ["released", "taken"]
    assert f"poft: waiting for `poft score` (pid {os.getpid()} on " in capsys.readouterr().err
