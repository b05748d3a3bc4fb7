"""`poft score` as a user runs it: the CLI in a subprocess, SIGKILL mid-run then resume, torchrun with 2
processes, and the output read back by the trainer's own data path."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import load_from_disk
from fixtures.scoring import WORDS, score, write_rows  # tests/ is on sys.path

from poft.readers import load_sft_dataset
from poft.shards import shard_files
from poft.tiny import build_tokenizer
from poft.training_data import prepare_training_dataset

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model) -> dict:
    root = tmp_path_factory.mktemp("score_cli")
    corpus = [" ".join(WORDS) * 3]
    models = [
        tiny_model(family, corpus, vocab_size=320, hidden_size=48, seed=k)
        for k, family in enumerate(("chatml", "llama3"))
    ]
    write_rows(root / "data.jsonl", 60)
    return {"root": root, "models": models, "data": str(root / "data.jsonl")}


def score_cmd(data: str, models: list[str], out: Path, *extra: str) -> list[str]:
    model_args = [a for m in models for a in ("--model", m)]
    return [
        "-m",
        "poft",
        "score",
        "--dataset",
        data,
        *model_args,
        "--output",
        str(out),
        "--no-progress",
        *extra,
    ]


def run(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *(launcher or []), *args], env=ENV, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def one_process(setup) -> Path:
    out = setup["root"] / "one"
    done = run(score_cmd(setup["data"], setup["models"], out, "--max-length", "40", "--batch-tokens", "256"))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_cli_output_is_what_the_trainer_reads(setup, one_process):
    scored = load_sft_dataset(str(one_process))
    assert scored["id"] == [f"r{i}" for i in range(60)]
    manifest = json.loads((one_process / "manifest.json").read_text())
    assert manifest["counts"]["truncated"]["llama3"] == sum(scored["llama3_truncated"]) > 0
    target = build_tokenizer("chatml", [" ".join(WORDS)], vocab_size=300)
    prepared = prepare_training_dataset(
        scored, target, max_length=64, ref_score_column="ref_score", direction_column=None
    )
    n_nan = manifest["counts"][
        "ref_score_nan"
    ]  # responses truncated away entirely: NaN, dropped by the trainer
    assert n_nan == sum(s != s for s in scored["ref_score"]) < 30
    assert len(prepared) == 60 - n_nan and all(s < 0 for s in prepared["poft_ref_score"])


def test_cli_names_a_bad_row_and_exits_1(setup, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(
        Path(setup["data"]).read_text() + '{"id": "oops", "messages": [{"role": "user", "content": "q"}]}\n'
    )
    done = run(score_cmd(str(data), setup["models"][:1], tmp_path / "out"))
    assert done.returncode == 1
    assert (
        f"{data}: 1 of 61 rows cannot be read as messages: line 61 (id=oops): no assistant turn"
        in done.stderr
    )


def test_threads_follow_the_cpus_the_process_may_use(setup, tmp_path):
    """Without OMP_NUM_THREADS, `poft score` on the CPU runs as many torch threads as the CPUs it may use (as
    `taskset -c N poft score ...` pins it to one CPU here), not the machine's cores, and says so."""
    env = {k: v for k, v in ENV.items() if k != "OMP_NUM_THREADS"}
    one_cpu = min(os.sched_getaffinity(0))
    done = subprocess.run(
        [sys.executable, *score_cmd(setup["data"], setup["models"][:1], tmp_path / "out", "--max-length", "40")],
        env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: os.sched_setaffinity(0, {one_cpu}),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "poft: 1 CPU thread (affinity 1, cgroup quota " in done.stdout and "1 process)" in done.stdout


@pytest.mark.slow
def test_two_processes_give_the_same_output_as_one(setup, one_process, tmp_path):
    out = tmp_path / "two"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = score_cmd(setup["data"], setup["models"], out, "--max-length", "40", "--batch-tokens", "256")
    done = run(args, launcher)
    assert done.returncode == 0, done.stderr[-3000:]
    # said once (by rank 0): the user's OMP_NUM_THREADS=1 is kept
    assert done.stdout.count("poft: 1 CPU thread (OMP_NUM_THREADS=1, the user's setting") == 1
    assert "2 processes)" in done.stdout
    one, two = load_from_disk(str(one_process)), load_from_disk(str(out))
    assert two.column_names == one.column_names and two["id"] == one["id"]
    for alias in ("chatml", "llama3"):
        assert two[f"{alias}_n_tokens"] == one[f"{alias}_n_tokens"]
        assert two[f"{alias}_logp_sum"] == pytest.approx(one[f"{alias}_logp_sum"], rel=1e-6)
        assert {p.name.split("-")[0] for p in shard_files(out, alias)} == {"rank0", "rank1"}
    assert two["ref_score"] == pytest.approx(one["ref_score"], rel=1e-6, nan_ok=True)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_loses_and_doubles_nothing(tmp_path, tiny_model):
    zephyr = tiny_model("zephyr", [" ".join(WORDS) * 3], vocab_size=320)
    data, out = tmp_path / "data.jsonl", tmp_path / "out"
    write_rows(data, 240)
    args = score_cmd(str(data), [zephyr], out, "--batch-tokens", "128", "--rows-per-shard", "4")
    process = subprocess.Popen(
        [sys.executable, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while len(shard_files(out, "zephyr")) < 3 and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read()[-2000:]
    assert not (out / "manifest.json").exists()
    scored_before = sum(len(json.loads(p.read_text())["rows"]) for p in shard_files(out, "zephyr"))
    assert 0 < scored_before < 240

    resumed = score(str(data), [zephyr], out, batch_tokens=128, progress=False)
    rows = [r for p in shard_files(out, "zephyr") for r in json.loads(p.read_text())["rows"]]
    assert sorted(rows) == list(range(240))  # every row exactly once across the killed and resumed runs
    fresh = score(str(data), [zephyr], tmp_path / "fresh", batch_tokens=128, progress=False)
    assert resumed["id"] == fresh["id"] == [f"r{i}" for i in range(240)]
    assert resumed["zephyr_n_tokens"] == fresh["zephyr_n_tokens"]
    assert resumed["zephyr_logp_sum"] == pytest.approx(fresh["zephyr_logp_sum"], rel=1e-6)


def test_forced_format_is_used_and_a_mismatch_is_one_line(setup, tmp_path):
    """`--format` forces the reader; forcing a format the file is not in exits 1 naming the missing columns."""
    data = tmp_path / "sharegpt.jsonl"
    rows = [
        {
            "id": f"s{i}",
            "conversations": [{"from": "human", "value": f"add {i}"}, {"from": "gpt", "value": str(i)}],
        }
        for i in range(4)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = run(score_cmd(str(data), setup["models"][:1], tmp_path / "ok", "--format", "sharegpt"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ShareGPT" in done.stdout + done.stderr and "forced" in done.stdout + done.stderr
    assert load_from_disk(str(tmp_path / "ok"))["messages"][1][1] == {"role": "assistant", "content": "1"}
    done = run(score_cmd(str(data), setup["models"][:1], tmp_path / "bad", "--format", "alpaca"))
    assert done.returncode == 1
    assert "format 'alpaca' needs columns ['instruction', 'output']" in done.stderr
    assert "Traceback" not in done.stderr
