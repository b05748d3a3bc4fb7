"""Training faults: SIGKILL + --resume_from_checkpoint gives the uninterrupted weights; stale scores refused."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from poft import PoFTConfig, PoFTTrainer
from poft.example import make_rows
from poft.readers import fingerprint as row_fingerprint

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("resume")
    rows = make_rows(32, seed=4)
    corpus = [m["content"] for r in rows for m in r["messages"]]
    model = tiny_model("zephyr", corpus, vocab_size=300, hidden_size=32, seed=1, name="model")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model": model, "data": str(root / "train.jsonl"), "rows": rows}


def train(tiny, out: Path, *mode: str, nproc: int = 1, steps: int = 6) -> subprocess.CompletedProcess:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*launcher, str(HERE / "resume_train.py"), tiny["model"], tiny["data"], str(out), str(steps), *mode]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_weights(tiny, tmp_path):
    straight = train(tiny, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = train(tiny, tmp_path / "killed", "kill-after-save=4")
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "killed" / "checkpoint-4").is_dir() and not (tmp_path / "killed" / "final.pt").exists()

    resumed = train(tiny, tmp_path / "killed", "resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "straight" / "final.pt")
    b = torch.load(tmp_path / "killed" / "final.pt")
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-7), name


@pytest.mark.slow
def test_one_dead_process_ends_the_job_and_resume_works(tiny, tmp_path):
    """2 processes; rank 1 is SIGKILLed at step 3: torchrun stops the job with an error, no hang; the rerun
    resumes from checkpoint-2 and ends with the weights of an uninterrupted 2-process run."""
    import time

    straight = train(tiny, tmp_path / "straight", nproc=2)
    assert straight.returncode == 0, straight.stderr[-2000:]
    start = time.monotonic()
    crashed = train(tiny, tmp_path / "crashed", "kill-rank1-at=3", nproc=2)
    assert crashed.returncode != 0 and time.monotonic() - start < 120
    assert "SIGKILL" in crashed.stderr or "Signal 9" in crashed.stderr or "exitcode" in crashed.stderr
    assert (tmp_path / "crashed" / "checkpoint-2").is_dir() and not (
        tmp_path / "crashed" / "final.pt"
    ).exists()
    resumed = train(tiny, tmp_path / "crashed", "resume", nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = torch.load(tmp_path / "straight" / "final.pt"), torch.load(tmp_path / "crashed" / "final.pt")
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-7), name


def scored_rows(tiny) -> list[dict]:
    return [{**r, "fingerprint": row_fingerprint(r["messages"])} for r in tiny["rows"][:8]]


def config(tmp_path) -> PoFTConfig:
    return PoFTConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
    )


def test_rows_matching_their_fingerprints_train(tiny, tmp_path):
    trainer = PoFTTrainer(
        model=tiny["model"], args=config(tmp_path), train_dataset=Dataset.from_list(scored_rows(tiny))
    )
    assert len(trainer.train_dataset) == 8


@pytest.mark.parametrize("edit", ["content", "reorder", "role"])
def test_stale_scores_are_refused_naming_the_rows(tiny, tmp_path, edit):
    rows = scored_rows(tiny)
    if edit == "content":  # the response was edited after scoring
        rows[3]["messages"] = [rows[3]["messages"][0], {"role": "assistant", "content": "edited answer"}]
    elif edit == "reorder":  # the scores were joined to the wrong rows
        rows[5]["fingerprint"], rows[6]["fingerprint"] = rows[6]["fingerprint"], rows[5]["fingerprint"]
    else:  # a system prompt was added (re-templated)
        rows[3]["messages"] = [{"role": "system", "content": "Be brief."}, *rows[3]["messages"]]
    expected = (
        "row 5 \\(id=tiny-5\\): .*; row 6 \\(id=tiny-6\\): "
        if edit == "reorder"
        else "row 3 \\(id=tiny-3\\): "
    )
    with pytest.raises(ValueError, match=f"no longer match the conversation that was scored.*({expected})"):
        PoFTTrainer(model=tiny["model"], args=config(tmp_path), train_dataset=Dataset.from_list(rows))


def test_model_folder_without_chat_template_names_the_model(tiny, tmp_path):
    import shutil

    from poft.chat import ChatTemplateError

    broken = tmp_path / "no-template"
    shutil.copytree(tiny["model"], broken)
    (broken / "chat_template.jinja").unlink()
    with pytest.raises(ChatTemplateError, match=f"{broken}: the tokenizer has no chat template"):
        PoFTTrainer(
            model=str(broken), args=config(tmp_path), train_dataset=Dataset.from_list(scored_rows(tiny))
        )


def test_model_folder_without_tokenizer_is_a_clear_error(tiny, tmp_path):
    import shutil

    broken = tmp_path / "no-tokenizer"
    shutil.copytree(tiny["model"], broken)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (broken / name).unlink()
    with pytest.raises(ValueError, match=f"{broken}: could not load the target's tokenizer"):
        PoFTTrainer(
            model=str(broken), args=config(tmp_path), train_dataset=Dataset.from_list(scored_rows(tiny))
        )
