"""What stops a training run, what it leaves behind, and what a resume may use (issue 13, items 2, 4, 5).

Each defect here was seen on the earlier main: `--beta nan` trained a NaN model and exited 0; `beta 1e30`
gave infinite gradient norms and no warning; a checkpoint cut short blocked `--resume_from_checkpoint` until
deleted by hand and `true` was read as a folder named "true"; a full disk was a raw RuntimeError; with
`save_strategy: no` no trainer_state.json, log or curve was written.
"""

import json
import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from poft import PoFTConfig, PoFTTrainer
from poft.example import make_rows
from poft.readers import fingerprint as row_fingerprint
from poft.trainer import CheckpointWriteError, NonFiniteTrainingError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    rows = make_rows(16, seed=3)
    corpus = [m["content"] for r in rows for m in r["messages"]]
    model = tiny_model("chatml", corpus, vocab_size=300, hidden_size=32, seed=2, name="guards")
    scored = [{**r, "fingerprint": row_fingerprint(r["messages"])} for r in rows]
    return {"model": model, "rows": scored}


def config(tmp_path, **overrides) -> PoFTConfig:
    return PoFTConfig(
        **{
            "output_dir": str(tmp_path),
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "bf16": False,
            "gradient_checkpointing": False,
            "report_to": [],
            "save_strategy": "no",
            **overrides,
        }
    )


@pytest.mark.parametrize(
    "field, value",
    [("beta", math.nan), ("beta", math.inf), ("beta", 1e39), ("gamma", math.nan), ("gamma", -1e39)],
)
def test_non_finite_or_out_of_range_beta_gamma_are_refused(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"{field} must be a finite number within float32 range"):
        config(tmp_path, **{field: value})


def test_an_infinite_gradient_stops_before_the_update(tiny, tmp_path):
    """beta 1e30: the loss is finite, the gradient is not. Training stops at step 1, weights untouched."""
    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = PoFTTrainer(
        model=model, args=config(tmp_path, beta=1e30), train_dataset=Dataset.from_list(tiny["rows"])
    )
    with pytest.raises(NonFiniteTrainingError, match=r"step 1: the gradient norm is (inf|nan)"):
        trainer.train()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_nan_loss_stops_the_run(tiny, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny["model"])
    with torch.no_grad():
        model.get_output_embeddings().weight[5, 0] = float("nan")  # corrupted weights
    trainer = PoFTTrainer(model=model, args=config(tmp_path), train_dataset=Dataset.from_list(tiny["rows"]))
    with pytest.raises(NonFiniteTrainingError, match="step 1: the training loss is nan"):
        trainer.train()


def test_a_run_without_checkpoints_leaves_its_log_state_and_curves(tiny, tmp_path):
    trainer = PoFTTrainer(
        model=tiny["model"], args=config(tmp_path, max_steps=3), train_dataset=Dataset.from_list(tiny["rows"])
    )
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == [1, 2, 3]
    assert all(
        0 < r["poft/weight"] < 1 and "poft/margin" in r and "poft/win_rate" in r for r in log if "loss" in r
    )
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and len(state["log_history"]) == len(log)
    assert (tmp_path / "curves.png").stat().st_size > 5000


def test_resume_last_skips_a_checkpoint_cut_short(tiny, tmp_path, capsys):
    """Killed while saving checkpoint-2 (no trainer_state.json): `last` resumes from checkpoint-1 and ends at the
    uninterrupted run's weights; `true` means the same."""
    data = Dataset.from_list(tiny["rows"])
    straight = PoFTTrainer(
        model=tiny["model"],
        args=config(tmp_path / "straight", max_steps=3, lr_scheduler_type="constant"),
        train_dataset=data,
    )
    straight.train()
    args = config(
        tmp_path / "cut", max_steps=2, save_strategy="steps", save_steps=1, lr_scheduler_type="constant"
    )
    PoFTTrainer(model=tiny["model"], args=args, train_dataset=data).train()
    (tmp_path / "cut" / "checkpoint-2" / "trainer_state.json").unlink()
    for value in ("last", "true"):
        args = config(tmp_path / "cut", max_steps=3, save_strategy="no", lr_scheduler_type="constant")
        resumed = PoFTTrainer(model=tiny["model"], args=args, train_dataset=data)
        resumed.train(resume_from_checkpoint=value)
        assert "checkpoint-2 is incomplete" in capsys.readouterr().out
        for (name, a), b in zip(
            straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
        ):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name


def test_a_full_disk_while_saving_is_one_clear_error(tiny, tmp_path, monkeypatch):
    args = config(tmp_path, max_steps=1, save_strategy="steps", save_steps=1)
    trainer = PoFTTrainer(model=tiny["model"], args=args, train_dataset=Dataset.from_list(tiny["rows"]))

    def full_disk(output_dir):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(trainer, "_save_optimizer_and_scheduler", full_disk)
    with pytest.raises(
        CheckpointWriteError, match=r"checkpoint-1 failed: the disk is full.*resume_from_checkpoint last"
    ):
        trainer.train()


def test_report_to_tensorboard_writes_events(tiny, tmp_path):
    args = config(tmp_path, max_steps=1, report_to=["tensorboard"])
    PoFTTrainer(model=tiny["model"], args=args, train_dataset=Dataset.from_list(tiny["rows"])).train()
    assert list(tmp_path.rglob("events.out.tfevents.*"))
