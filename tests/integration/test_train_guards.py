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
    with pytest.raises(
        NonFiniteTrainingError, match=r"step 1: the gradient norm is (inf|nan).*rows in this step: row \d+"
    ):
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


# ---- scores: range and provenance (item 2 and 3) --------------------------------------------------------------


def test_a_score_beyond_float32_is_a_bad_row(tiny, tmp_path):
    """1e39 is finite in float64 (the check passed) and inf in the float32 loss."""
    rows = [dict(r) for r in tiny["rows"][:8]]
    rows[2]["ref_score"] = 1e39
    with pytest.raises(ValueError, match=r"row 2 \(id=tiny-2\): ref_score beyond float32 range"):
        PoFTTrainer(
            model=tiny["model"],
            args=config(tmp_path, on_bad_row="error"),
            train_dataset=Dataset.from_list(rows),
        )


def test_bi_poft_without_its_label_column_is_an_error(tiny, tmp_path):
    with pytest.raises(ValueError, match="bi-PoFT needs a 'label' column"):
        PoFTTrainer(
            model=tiny["model"],
            args=config(tmp_path, objective="bi_poft"),
            train_dataset=Dataset.from_list(tiny["rows"]).remove_columns("label"),
        )


@pytest.fixture(scope="module")
def scored(tiny, tmp_path_factory):
    """The training rows scored by `poft score`'s code with two different aligned models (and max_length 40)."""
    from fixtures.scoring import score

    root = tmp_path_factory.mktemp("provenance")
    rows = [{"id": r["id"], "messages": r["messages"]} for r in tiny["rows"]]
    first = score(Dataset.from_list(rows), [f"a={tiny['model']}"], root / "a", max_length=40, progress=False)
    second = score(Dataset.from_list(rows), [f"b={tiny['model']}"], root / "b", progress=False)
    return {"a": first, "b": second, "root": root}


def test_scores_carry_how_they_were_made_and_training_checks_it(tiny, scored, tmp_path, capsys):
    from datasets import concatenate_datasets

    provenance = json.loads(scored["a"]["score_provenance"][0])
    assert (
        provenance["normalization"] == "token"
        and provenance["max_length"] == 40
        and "a" in provenance["models"]
    )
    with pytest.raises(ValueError, match="made with normalization='token'.*score_normalization='byte'"):
        PoFTTrainer(
            model=tiny["model"], args=config(tmp_path, score_normalization="byte"), train_dataset=scored["a"]
        )
    keep = [c for c in scored["a"].column_names if c in scored["b"].column_names]
    mixed = concatenate_datasets([scored["a"].select_columns(keep), scored["b"].select_columns(keep)])
    with pytest.raises(ValueError, match="reference scores come from 2 different `poft score` runs"):
        PoFTTrainer(model=tiny["model"], args=config(tmp_path), train_dataset=mixed)


def test_training_says_when_it_cuts_rows_the_scorer_saw_whole(tiny, scored, tmp_path, capsys):
    PoFTTrainer(model=tiny["model"], args=config(tmp_path, max_length=24), train_dataset=scored["b"])
    out = capsys.readouterr().out
    assert "rows are cut at max_length=24 in training but were scored whole" in out


def test_scores_from_elsewhere_train_with_one_line_saying_so(tiny, tmp_path, capsys):
    rows = [{**r, "ref_score": -1.0} for r in tiny["rows"][:8]]
    PoFTTrainer(model=tiny["model"], args=config(tmp_path), train_dataset=Dataset.from_list(rows))
    assert "no 'score_provenance' column (scores not written by `poft score`)" in capsys.readouterr().out
