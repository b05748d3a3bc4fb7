"""What `poft train` records per training row (row_weights/epoch-N.jsonl), the log it keeps when the user set no
logging_steps, the tau-by-label panel, and `poft inspect --weights`: on a tiny model, on the CPU."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from poft import PoFTConfig, PoFTTrainer
from poft.cli import main
from poft.example import make_rows, write_tiny_example
from poft.inspection import inspect_scores, read_row_weights
from poft.records import auto_logging_steps, plot_curves, read_log

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def config(tmp_path, **overrides) -> PoFTConfig:
    """No logging_steps: the run chooses (every step for these short runs)."""
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        seed=0,
    )
    settings.update(overrides)
    return PoFTConfig(**settings)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected_tau(line: dict, beta: float, gamma: float) -> float:
    margin = beta * (line["r_theta"] - line["r_ref"]) + gamma
    return beta / (1.0 + math.exp(margin))  # beta * sigmoid(-margin)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """A tiny model and 11 labelled rows, one of which (row 4) has no score and is dropped before training."""
    rows = make_rows(11, seed=3, noise=0.4)
    rows[4]["ref_score"] = None
    corpus = [m["content"] for r in rows for m in r["messages"]]
    model = tiny_model("chatml", corpus, vocab_size=320, hidden_size=32, name="model")
    return {"model": model, "rows": rows}


def test_a_file_per_epoch_with_each_training_row_and_a_log_point_per_step(tiny, tmp_path):
    beta, gamma = 2.0, 0.5
    args = config(tmp_path, num_train_epochs=2, beta=beta, gamma=gamma)
    assert args.logging_steps_auto
    PoFTTrainer(model=tiny["model"], args=args, train_dataset=Dataset.from_list(tiny["rows"])).train()
    out = Path(args.output_dir)
    trained = [r for r in tiny["rows"] if r["ref_score"] is not None]
    assert sorted(p.name for p in (out / "row_weights").iterdir()) == ["epoch-1.jsonl", "epoch-2.jsonl"]
    for epoch in (1, 2):
        got = lines(out / "row_weights" / f"epoch-{epoch}.jsonl")
        assert [line["id"] for line in got] == [r["id"] for r in trained]  # row 4 dropped, input order
        assert [line["label"] for line in got] == [r["label"] for r in trained]
        assert [line["r_ref"] for line in got] == pytest.approx([r["ref_score"] for r in trained], rel=1e-6)
        assert {line["epoch"] for line in got} == {epoch}
        assert [line["where"] for line in got] == [f"row {i}" for i in (0, 1, 2, 3, 5, 6, 7, 8, 9, 10)]
        first, last = (epoch - 1) * 3 + 1, epoch * 3  # 10 rows, batch 4: 3 steps per epoch
        assert all(first <= line["step"] <= last for line in got)
        for line in got:
            assert line["tau"] == pytest.approx(expected_tau(line, beta, gamma), rel=1e-5)
    # every step logged (6 steps: TRL's default of 10 would have logged none), mean tau per label included
    steps = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert any("poft/weight_label_false" in r for r in steps)
    assert all("poft/weight_label_true" in r for r in steps)
    assert (out / "curves.png").stat().st_size > 0


def test_bi_poft_tau_is_signed_and_sft_writes_no_file(tiny, tmp_path):
    args = config(tmp_path, objective="bi_poft", max_steps=2, per_device_train_batch_size=5)
    PoFTTrainer(model=tiny["model"], args=args, train_dataset=Dataset.from_list(tiny["rows"])).train()
    got = lines(Path(args.output_dir) / "row_weights" / "epoch-1.jsonl")
    assert len(got) == 10
    assert all(line["tau"] > 0 for line in got if line["label"])
    undesirable = [line["tau"] for line in got if not line["label"]]
    assert all(t <= 0 for t in undesirable) and min(undesirable) < 0  # pushed down (or no longer: 0)
    for line in got:
        if line["label"]:
            assert line["tau"] == pytest.approx(expected_tau(line, 1.0, 0.0), rel=1e-5)

    sft = config(tmp_path / "sft", objective="sft", max_steps=1)
    PoFTTrainer(model=tiny["model"], args=sft, train_dataset=Dataset.from_list(tiny["rows"])).train()
    assert not (Path(sft.output_dir) / "row_weights").exists()
    assert (Path(sft.output_dir) / "log.jsonl").exists()


def test_packed_rows_are_each_one_line(tiny, tmp_path):
    """With BFD packing a training row is several sequences' neighbour: each sequence still names its row."""
    args = config(tmp_path, num_train_epochs=1, packing=True, max_length=64, per_device_train_batch_size=2)
    PoFTTrainer(model=tiny["model"], args=args, train_dataset=Dataset.from_list(tiny["rows"])).train()
    got = lines(Path(args.output_dir) / "row_weights" / "epoch-1.jsonl")
    assert [line["id"] for line in got] == [r["id"] for r in tiny["rows"] if r["ref_score"] is not None]
    assert max(line["step"] for line in got) < 5  # packed: fewer steps than 10 rows / 2 per batch
    for line in got:
        assert line["tau"] == pytest.approx(expected_tau(line, 1.0, 0.0), rel=1e-5)


def test_a_resumed_run_writes_the_whole_epoch(tiny, tmp_path):
    """A checkpoint at step 2 of 3 keeps the rows seen so far; resuming from it writes all 10 rows, the first
    ones as the checkpoint saw them and the rest as the uninterrupted run computed them."""
    data = Dataset.from_list(tiny["rows"])
    whole = config(tmp_path / "whole", num_train_epochs=1, save_strategy="steps", save_steps=2)
    PoFTTrainer(model=tiny["model"], args=whole, train_dataset=data).train()
    expected = lines(Path(whole.output_dir) / "row_weights" / "epoch-1.jsonl")
    assert (Path(whole.output_dir) / "checkpoint-2" / "row_weights_partial.jsonl").exists()

    out = Path(whole.output_dir)
    (out / "row_weights" / "epoch-1.jsonl").unlink()
    (out / "row_weights" / "epoch-2.jsonl").write_text("{}\n")  # left by an earlier run: replaced / removed
    resumed = config(tmp_path / "whole", num_train_epochs=1, save_strategy="no")
    trainer = PoFTTrainer(model=tiny["model"], args=resumed, train_dataset=data)
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    got = lines(out / "row_weights" / "epoch-1.jsonl")
    assert not (out / "row_weights" / "epoch-2.jsonl").exists()
    assert [line["id"] for line in got] == [line["id"] for line in expected]
    assert [line["step"] for line in got] == [line["step"] for line in expected]
    for a, b in zip(got, expected, strict=True):
        assert a["tau"] == pytest.approx(b["tau"], rel=1e-4), a["id"]


@pytest.mark.slow
def test_ddp_writes_every_process_rows_once(tiny, tmp_path):
    """2 processes, 7 rows, 2 per device: the last batch is evened out with a repeated row; one line per row."""
    rows = [r for r in tiny["rows"] if r["ref_score"] is not None][:7]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ddp"
    script = [str(HERE / "row_weights_ddp.py"), tiny["model"], str(data), str(out)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = lines(out / "row_weights" / "epoch-1.jsonl")
    assert [line["id"] for line in got] == [r["id"] for r in rows]
    assert [line["row"] for line in got] == list(range(7))
    for line in got:
        assert line["tau"] == pytest.approx(expected_tau(line, 1.0, 0.0), rel=1e-5)
    steps = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]  # 7 rows over 2 x 2 per step: 2 steps, each logged once


@pytest.mark.slow
def test_poft_train_on_a_noisy_set_down_weights_the_noisy_rows(tmp_path, capsys):
    """The acceptance: `poft train` on the tiny example (clean rows r_ref ~ -1.5, corrupted rows ~ -4.0)
    leaves per-row weights and a curve where the noisy rows' tau is well below the clean rows'."""
    made = write_tiny_example(tmp_path / "tiny", n_rows=48, seed=0)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "poft", "train", "--model_name_or_path", str(made["model"])]
    cmd += ["--dataset_name", str(made["data"]), "--output_dir", str(out), "--num_train_epochs", "2"]
    cmd += ["--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--max_length", "128"]
    cmd += [
        "--bf16",
        "false",
        "--gradient_checkpointing",
        "false",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]

    weights = read_row_weights(out)  # the run folder: its last epoch
    assert weights.attrs["file"].endswith("epoch-2.jsonl") and len(weights) == 48
    is_clean = weights["label"].astype(bool)
    clean, noisy = weights["tau"][is_clean].mean(), weights["tau"][~is_clean].mean()
    assert noisy < clean - 0.05, (noisy, clean)
    steps = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))  # 48 rows / 8 x 2 epochs, each step logged
    both = [r for r in steps if "poft/weight_label_false" in r and "poft/weight_label_true" in r]
    assert len(both) >= 6  # a batch of 8 may hold no noisy row: that point has one line only
    assert all(r["poft/weight_label_false"] < r["poft/weight_label_true"] for r in both)  # the panel's lines
    assert (out / "curves.png").stat().st_size > 0

    summary = inspect_scores(made["data"], tmp_path / "inspect", k=3, weights=out)
    tau = summary["weights"]["tau"]
    assert tau["False"]["mean"] == pytest.approx(noisy) and tau["True"]["mean"] == pytest.approx(clean)
    assert summary["weights"]["epoch"] == 2 and summary["weights"]["n_not_in_scores"] == 0
    lowest = weights.sort_values("tau", kind="stable")["id"].tolist()[:3]
    assert summary["weights"]["lowest_ids"] == lowest
    assert "lowest tau (epoch 2" in summary["extremes_text"]
    # the CLI, grouping by a column of the scores (joined on id), reading one epoch's file
    first = out / "row_weights" / "epoch-1.jsonl"
    cli = ["inspect", str(made["data"]), "--weights", str(first), "--by-label", "label", "-k", "2"]
    assert main([*cli, "--output", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    assert "per-row weight tau, epoch 1" in printed and "label=False" in printed and "2 lowest tau" in printed
    by_column = json.loads((tmp_path / "cli" / "summary.json").read_text())["weights"]
    epoch_1 = read_row_weights(first)
    noisy_1 = epoch_1["tau"][~epoch_1["label"].astype(bool)].mean()
    assert by_column["column"] == "label" and by_column["tau"]["False"]["mean"] == pytest.approx(noisy_1)


def test_auto_logging_steps_and_the_label_panel(tmp_path):
    assert [auto_logging_steps(n) for n in (1, 6, 39, 40, 100, 199, 200, 10_000)] == [
        1,
        1,
        1,
        2,
        5,
        9,
        10,
        10,
    ]
    log = [
        {
            "step": s,
            "loss": 1.0 / s,
            "poft/weight": 0.9,
            "poft/weight_label_true": 0.95,
            "poft/weight_label_false": 0.5,
        }
        for s in (1, 2, 3)
    ]
    assert plot_curves(log, tmp_path / "curves.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no row_weights/epoch-N.jsonl"):
        read_row_weights(tmp_path)
