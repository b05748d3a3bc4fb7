"""Multi-process runs end with poft.distributed.end_distributed and leave through normal interpreter teardown:
no gloo thread is left when the interpreter is torn down (pytorch/pytorch#190489), every rank exits 0."""

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch.distributed as dist

from poft.distributed import end_distributed, gloo_threads
from poft.example import make_rows

HERE = Path(__file__).parent


@pytest.fixture
def one_process_group():
    """A real gloo group of one process; a weak reference to it."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    group = weakref.ref(dist.distributed_c10d._get_default_group())
    yield group
    if dist.is_initialized():
        dist.destroy_process_group()


def test_a_default_argument_bound_to_the_group_is_released(one_process_group):
    """`def f(group=group.WORLD)` defined while the group exists (as DeepSpeed's TorchBackend.barrier is):
    end_distributed points the default back at None and the group, with its threads, is gone."""

    def barrier(group=dist.group.WORLD, async_op=False):
        return group, async_op

    assert barrier.__defaults__[0] is one_process_group()
    threads = len(gloo_threads())
    end_distributed()
    assert barrier.__defaults__ == (None, False)
    assert one_process_group() is None and not dist.is_initialized()
    assert len(gloo_threads()) < threads


def test_a_group_still_referenced_is_an_error(one_process_group):
    holder = [one_process_group()]
    with pytest.raises(RuntimeError, match="still referenced"):
        end_distributed()
    assert not dist.is_initialized()  # destroyed in torch's tables, alive only through `holder`
    holder.clear()
    gc.collect()
    assert one_process_group() is None


def test_single_process_is_left_alone():
    assert not dist.is_initialized()
    end_distributed()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("exit")
    rows = make_rows(8, seed=1)
    corpus = [m["content"] for r in rows for m in r["messages"]]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": tiny_model("chatml", corpus, vocab_size=320, hidden_size=32, name="model"), "root": root}


def torchrun_training(tiny, out: Path, *deepspeed: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "exit_train.py"), tiny["model"], str(tiny["root"] / "train.jsonl"), str(out), *deepspeed]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def assert_clean_exit(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: no gloo thread after end_distributed" in done.stdout


@pytest.mark.slow
def test_two_process_training_exits_0_through_interpreter_teardown(tiny, tmp_path):
    for run in range(2):
        assert_clean_exit(torchrun_training(tiny, tmp_path / f"run{run}"))
        assert (tmp_path / f"run{run}" / "model.safetensors").is_file()


@pytest.mark.slow
def test_deepspeed_zero2_training_exits_0_through_interpreter_teardown(tiny, tmp_path):
    """DeepSpeed holds its own group in module globals, its engine and every trained parameter."""
    pytest.importorskip("deepspeed")
    config = tmp_path / "zero2.json"
    zero2 = {
        "zero_optimization": {"stage": 2},
        "train_micro_batch_size_per_gpu": "auto",
        "bf16": {"enabled": False},
    }
    config.write_text(json.dumps(zero2))
    assert_clean_exit(torchrun_training(tiny, tmp_path / "zero2", str(config)))
