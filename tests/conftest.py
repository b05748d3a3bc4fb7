"""Shared test set-up: offline, deterministic, small thread count; tiny tokenizers built once per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tokenizers():
    """One tiny tokenizer per chat-template family: chatml (markers), llama3 (BOS in template), zephyr."""
    from poft.tiny import build_tokenizer

    return {family: build_tokenizer(family) for family in ("chatml", "llama3", "zephyr")}


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (as the scoring subprocesses use with OMP_NUM_THREADS=1): the same
    kernels, so bit-identical scores, and tiny matmuls on a shared 2-core machine run faster uncontended."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
