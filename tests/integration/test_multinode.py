"""Several machines on one engine: `torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d` started twice on
this machine (two launchers, one process each, one rendezvous, a shared output folder), as two nodes of a
cluster would run it. `poft score` gives the one-process output, and resumes after a node is killed;
`poft train` gives the update of the 2-process single-node run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import torch
from datasets import concatenate_datasets, load_from_disk
from fixtures.scoring import WORDS, score, write_rows  # tests/ is on sys.path
from safetensors.torch import load_file

from poft.example import make_rows
from poft.readers import load_sft_dataset
from poft.shards import shard_files
from poft.tiny import build_tokenizer
from poft.training_data import prepare_training_dataset

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}

pytestmark = pytest.mark.usefixtures("one_thread")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(args: list[str], second: list[str] | None = None) -> list[subprocess.Popen]:
    """Two torchrun launchers of one process each, joined by a c10d rendezvous on a fresh port: the command
    each node of a 2-node cluster runs. The first node hosts the rendezvous store (`is_host`: on a cluster,
    the node whose address is the endpoint), and is rank 0 (ranks follow the launchers' order here)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}",
                "--rdzv_id", uuid.uuid4().hex[:8]]  # fmt: skip
    return [
        subprocess.Popen(
            [*launcher, "--rdzv_conf", f"is_host={int(node == 0)}", *(second if node and second else args)],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for node in range(2)
    ]


def finish(nodes: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each launcher."""
    outputs = [node.communicate(timeout=timeout) for node in nodes]
    return [(node.returncode, *output) for node, output in zip(nodes, outputs, strict=True)]


def assert_all_ok(done: list[tuple[int, str, str]]) -> None:
    for rc, _, err in done:
        assert rc == 0, err[-3000:]


def kill_node(node: subprocess.Popen) -> None:
    """SIGKILL a launcher and the processes it started (torchrun starts its workers in their own session,
    so killing the launcher alone would leave them running): a node that dies."""
    workers = psutil.Process(node.pid).children(recursive=True)
    node.send_signal(signal.SIGKILL)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    node.wait()


def score_args(data: Path, models: list[str], out: Path, *extra: str) -> list[str]:
    return ["-m", "poft", "score", "--dataset", str(data), *[a for m in models for a in ("--model", m)],
            "--output", str(out), "--no-progress", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model) -> dict:
    root = tmp_path_factory.mktemp("multinode")
    corpus = [" ".join(WORDS) * 3]
    models = [
        tiny_model(family, corpus, vocab_size=320, hidden_size=48, seed=k)
        for k, family in enumerate(("chatml", "llama3"))
    ]
    write_rows(root / "data.jsonl", 60)
    return {"root": root, "models": models, "data": root / "data.jsonl"}


def assert_same_scores(got, want, aliases) -> None:
    assert got.column_names == want.column_names and got["id"] == want["id"]
    for alias in aliases:
        assert got[f"{alias}_n_tokens"] == want[f"{alias}_n_tokens"]
        assert got[f"{alias}_logp_sum"] == pytest.approx(want[f"{alias}_logp_sum"], rel=1e-6)
    assert got["ref_score"] == pytest.approx(want["ref_score"], rel=1e-6, nan_ok=True)


@pytest.mark.slow
def test_two_nodes_score_into_one_folder_like_one_process(setup, tmp_path):
    options = ("--max-length", "40", "--batch-tokens", "256")
    out = tmp_path / "two-nodes"
    done = finish(two_nodes(score_args(setup["data"], setup["models"], out, *options)))
    assert_all_ok(done)
    said = "".join(stdout for _, stdout, _ in done)
    assert said.count("poft: scored 60 rows with 2 models") == 1  # one main process, on one node, finalises
    assert said.count("1 process)") == 1  # each node runs one process (LOCAL_WORLD_SIZE), said once
    one = score(
        setup["data"], setup["models"], tmp_path / "one", max_length=40, batch_tokens=256, progress=False
    )
    assert_same_scores(load_from_disk(str(out)), one, ("chatml", "llama3"))
    for alias in ("chatml", "llama3"):  # shards are named by global rank: no two nodes write the same names
        assert {p.name.split("-")[0] for p in shard_files(out, alias)} == {"rank0", "rank1"}
    assert json.loads((out / "manifest.json").read_text())["throughput"]["processes"] == 2


@pytest.mark.slow
def test_an_output_folder_on_each_nodes_own_disk_is_refused_at_the_start(setup, tmp_path):
    """The same path on two disks (here: two folders, one per node): the process that does not see the main
    process's files says so before scoring, and the main process then ends with the peer-lost line."""
    local = [tmp_path / "node0", tmp_path / "node1"]
    done = finish(two_nodes(*(score_args(setup["data"], setup["models"][:1], out) for out in local)))
    assert all(rc != 0 for rc, _, _ in done)
    said = f"poft score: error: {local[1]}: process 1 does not see the files the main process wrote there"
    assert said in done[1][2] and "a filesystem every node sees" in done[1][2]
    assert "another process of this run ended" in done[0][2]
    assert not list((local[1] / "shards").rglob("*.json")) and not (local[0] / "manifest.json").exists()


def test_without_a_shared_filesystem_parts_scored_apart_and_concatenated_equal_one_run(setup, tmp_path):
    """What scale-out.md gives for nodes that share no filesystem: each scores its own part of the rows (a
    one-node run into its own folder), then the folders are concatenated: the rows and scores of one run
    (a row's scores depend on that row alone), one `score_provenance`, read by the trainer's data path."""
    options = {"max_length": 40, "dtype": "float32", "progress": False}
    whole = score(setup["data"], setup["models"], tmp_path / "whole", **options)
    lines = setup["data"].read_text().splitlines(keepends=True)
    parts = []
    for k, chunk in enumerate((lines[:25], lines[25:])):
        (tmp_path / f"part{k}.jsonl").write_text("".join(chunk))
        parts.append(score(tmp_path / f"part{k}.jsonl", setup["models"], tmp_path / f"scored{k}", **options))
    concatenate_datasets(parts).save_to_disk(str(tmp_path / "joined"))
    joined = load_sft_dataset(str(tmp_path / "joined"))
    assert_same_scores(joined, whole, ("chatml", "llama3"))
    target = build_tokenizer("chatml", [" ".join(WORDS)], vocab_size=300)
    prepared = prepare_training_dataset(
        joined, target, max_length=64, ref_score_column="ref_score", direction_column=None
    )
    assert len(prepared) == 60 - sum(s != s for s in whole["ref_score"])  # NaN: response truncated away


@pytest.mark.slow
@pytest.mark.parametrize("killed", [0, 1], ids=["first-node", "second-node"])
def test_a_node_killed_mid_run_then_both_rerun_resume(tmp_path, tiny_model, killed):
    """One node dies mid-run (launcher and worker SIGKILLed). When it is the first node (rank 0, the
    rendezvous store), the other launcher loses the store and ends its process at once; when it is another
    node, the survivor finishes the share it is scoring, then says so in one line at the next collective.
    The same command on both nodes then finishes the folder: every row exactly once, the one-process scores."""
    zephyr = tiny_model("zephyr", [" ".join(WORDS) * 3], vocab_size=320)
    data, out = tmp_path / "data.jsonl", tmp_path / "out"
    write_rows(data, 400)
    args = score_args(data, [zephyr], out, "--batch-tokens", "128", "--rows-per-shard", "4")
    nodes = two_nodes(args)
    deadline = time.time() + 120
    while time.time() < deadline and all(node.poll() is None for node in nodes):
        ranks = [p.name.split("-")[0] for p in shard_files(out, "zephyr")]
        if ranks.count("rank0") >= 2 and ranks.count("rank1") >= 2:
            break
        time.sleep(0.02)
    kill_node(nodes[killed])
    killed_at = time.time()
    ((rc, _, err),) = finish(nodes[1 - killed : 2 - killed], timeout=180)
    print(f"the surviving node ended {time.time() - killed_at:.1f} s after the other was killed")
    assert rc != 0 and not (out / "manifest.json").exists()
    covered = [r for p in shard_files(out, "zephyr") for r in json.loads(p.read_text())["rows"]]
    assert 0 < len(covered) < 400 and len(covered) == len(set(covered))
    if killed == 1:
        said = "poft score: error: another process of this run ended (killed, or its node lost: see its log)"
        assert (
            f"{said}; the finished shards in {out} are kept: run the same command again on every node" in err
        )

    assert_all_ok(finish(two_nodes(args)))
    covered = [r for p in shard_files(out, "zephyr") for r in json.loads(p.read_text())["rows"]]
    assert sorted(covered) == list(range(400))  # every row exactly once across the killed and resumed runs
    fresh = score(data, [zephyr], tmp_path / "fresh", batch_tokens=128, progress=False)
    assert_same_scores(load_from_disk(str(out)), fresh, ("zephyr",))


def train_args(model: str, data: Path, out: Path) -> list[str]:
    return ["-m", "poft", "train", "--model_name_or_path", model, "--dataset_name", str(data),
            "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "4",
            "--optim", "sgd", "--learning_rate", "0.5", "--lr_scheduler_type", "constant",
            "--gradient_checkpointing", "false", "--bf16", "false", "--report_to", "none",
            "--save_strategy", "no", "--logging_steps", "1", "--seed", "7", "--data_seed", "7"]  # fmt: skip


def logged(out: Path) -> dict:
    return next(
        entry for entry in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in entry
    )


@pytest.mark.slow
def test_two_nodes_train_like_two_processes_on_one_node(tmp_path, tiny_model):
    """DDP over gloo on two nodes: the SGD update and logged loss of `--standalone --nproc_per_node 2`, bit for
    bit (which test_trainer.py shows equal to one process with the whole batch, within 1e-4)."""
    rows = make_rows(8, seed=1)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = tiny_model("chatml", [m["content"] for r in rows for m in r["messages"]], vocab_size=320,
                       hidden_size=32, name="model")  # fmt: skip
    one_node = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         *train_args(model, data, tmp_path / "one-node")],
        env=ENV, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert one_node.returncode == 0, one_node.stderr[-3000:]
    assert_all_ok(finish(two_nodes(train_args(model, data, tmp_path / "two-nodes"))))
    a, b = logged(tmp_path / "one-node"), logged(tmp_path / "two-nodes")
    assert (b["loss"], b["poft/weight"]) == (
        a["loss"],
        a["poft/weight"],
    )  # bit for bit: same ranks, same sums
    one, two = (load_file(tmp_path / run / "model.safetensors") for run in ("one-node", "two-nodes"))
    initial = load_file(Path(model) / "model.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        assert torch.equal(two[name], one[name]), name
    assert any(not torch.equal(one[name], initial[name]) for name in one)  # the step really moved the weights
