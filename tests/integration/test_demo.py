"""`poft demo --mini` end to end through the CLI: artefacts exist and are well formed (seconds, offline)."""

import json
import math
import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from poft.cli import main  # noqa: E402
from poft.demo.controls import main as controls_main  # noqa: E402
from poft.demo.noise import corrupt_chars, make_noisy_rows  # noqa: E402
from poft.demo.tasks import SKILLS, is_correct, make_splits  # noqa: E402


def test_splits_are_disjoint_and_deterministic():
    a, b = make_splits(3, 120, 60, 30), make_splits(3, 120, 60, 30)
    assert a == b
    prompts = [{e.prompt for e in split} for split in (a.train, a.aligned, a.test)]
    assert sum(map(len, prompts)) == 210 == len(set().union(*prompts))
    assert {e.skill for e in a.train} == set(SKILLS)
    assert all(is_correct(e, f" {e.answer}\n") for e in a.test)


def test_noise_rows_are_labelled_and_corrupted():
    splits = make_splits(0, 200, 0, 0)
    rows = make_noisy_rows(splits.train, 0.3, seed=1)
    noisy = [r for r in rows if not r["label"]]
    assert len(noisy) == 60
    assert {r["noise_kind"] for r in noisy} == {"mismatch", "chars"}
    assert all(r["messages"][1]["content"] != r["answer"] for r in noisy)
    assert all(r["messages"][1]["content"] == r["answer"] for r in rows if r["label"])
    assert corrupt_chars("abc", random.Random(0), rate=0.0) != "abc"


def test_demo_mini_writes_well_formed_artefacts(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--mini", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| noise | method |" in printed

    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"runs"}
    runs = results["runs"]
    assert {(r["method"], r["noise"]) for r in runs} == {("sft", 0.5), ("poft", 0.5), ("bi_poft", 0.5)}
    for run in runs:
        assert set(run) == {"method", "noise", "seed", "epoch", "metrics"}
        assert isinstance(run["seed"], int) and run["epoch"] == 1
        assert set(run["metrics"]) == {"accuracy", "sampled_accuracy", "clean_nll"}
        assert 0.0 <= run["metrics"]["accuracy"] <= 1.0
        assert 0.0 <= run["metrics"]["sampled_accuracy"] <= 1.0
        assert math.isfinite(run["metrics"]["clean_nll"]) and run["metrics"]["clean_nll"] > 0

    for name in ("accuracy_vs_epoch.png", "ref_scores.png", "poft_weights.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    for name in ("accuracy_vs_epoch.png", "ref_scores.png", "poft_weights.png", "| bi_poft |"):
        assert name in report

    # the second run reuses the cached aligned models and scores
    assert main(["demo", "--mini", "--output", str(out)]) == 0
    assert "reusing aligned models" in capsys.readouterr().out

    # the control runs behind RESULTS.md (python -m poft.demo.controls) run on the same cache
    assert controls_main(["--output", str(out), "--mini"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0.5 |")]
    assert [line.split(" | ")[1] for line in table] == ["sft", "poft_tau1", "poft"]
    for line in table:
        accuracy, sampled, nll = (float(x) for x in line.split(" | ")[2:5])
        assert 0 <= accuracy <= 1 and 0 <= sampled <= 1 and math.isfinite(nll) and nll > 0


def test_controls_refuse_a_folder_without_the_demo_cache(tmp_path):
    with pytest.raises(SystemExit, match="no cached aligned models"):
        controls_main(["--output", str(tmp_path), "--mini"])
