"""Shared test set-up: offline, deterministic, small thread count; tiny tokenizers built once per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
# The same precision on every machine: `--dtype auto` and training's bf16 default follow the CPU's bf16
# instructions, which CI machines may lack; tests of that choice set POFT_CPU_BF16 themselves.
os.environ["POFT_CPU_BF16"] = "0"

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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The one way tests get a model: `tiny_model(family, corpus, vocab_size=..., hidden_size=..., seed=...,
    name=...)` builds a tiny Llama and its tokenizer (poft.tiny), saves them to a folder named `name`
    (the alias `poft score` gives it; default the family) and returns its path. Built once per session for
    each set of arguments, so modules asking for the same model share it (tests must not write into it)."""
    from poft.tiny import build_model, build_tokenizer

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[tuple, str] = {}

    def make(
        family: str = "chatml",
        corpus: list[str] | None = None,
        *,
        vocab_size: int = 512,
        hidden_size: int = 64,
        num_layers: int = 2,
        seed: int = 0,
        name: str | None = None,
    ) -> str:
        key = (family, tuple(corpus or ()), vocab_size, hidden_size, num_layers, seed, name)
        if key not in built:
            folder = root / str(len(built)) / (name or family)
            tokenizer = build_tokenizer(family, corpus, vocab_size=vocab_size)
            build_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed).save_pretrained(
                folder
            )
            tokenizer.save_pretrained(folder)
            built[key] = str(folder)
        return built[key]

    return make
