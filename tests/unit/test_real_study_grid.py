"""The real-model study's grid (experiments/real_study.py): conditions, noise per type, the validation split, score
filtering, the choice of each method's rate and the mean +- std / per-seed-sign table. No model needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.real_study import (
    DEFAULT_ROWS,
    METHODS,
    RealStudyConfig,
    RunSpec,
    choose_rate,
    filtered_rows,
    noisy_training_rows,
    selection_table,
    split_rows,
    summary_table,
    validation_rows,
)

ROWS = json.loads(Path(DEFAULT_ROWS).read_text(encoding="utf-8"))


def test_default_grid_has_every_method_condition_three_seeds_and_two_rates():
    config = RealStudyConfig()
    assert config.conditions == [("none", 0.0), ("wrong_prompt", 0.3), ("corrupted", 0.3)]
    assert config.methods == list(METHODS) and {"sft", "poft", "dft", "poft_fixed_tau"} <= set(METHODS)
    assert len(config.seeds) >= 3 and len(config.learning_rates) >= 2
    assert RunSpec("corrupted", 0.3, "dft", 0.0015, 2).key == "corrupted0.3_dft_lr0.0015_s2"
    assert RunSpec("none", 0.0, "sft", 0.0005, 0).key == "none_sft_lr0.0005_s0"


def test_validation_split_is_disjoint_from_training_and_reported_rows():
    config = RealStudyConfig()
    train, heldout = split_rows(ROWS, config)
    validation = validation_rows(ROWS, config)
    ids = [{r["id"] for r in part} for part in (train, heldout, validation)]
    assert len(ids[2]) == config.n_validation
    assert not ids[0] & ids[2] and not ids[1] & ids[2]
    with pytest.raises(ValueError, match="needs 260"):
        validation_rows(ROWS, RealStudyConfig(n_train=200, n_heldout=40, n_validation=20))


@pytest.mark.parametrize("kind", ["wrong_prompt", "corrupted"])
def test_one_noise_type_replaces_the_same_rows_with_that_kind(kind):
    config = RealStudyConfig()
    train, _ = split_rows(ROWS, config)
    noisy = noisy_training_rows(train, 0.3, config, kind)
    mixed = noisy_training_rows(train, 0.3, config)
    assert {r["noise"] for r in noisy} == {"clean", kind}
    assert [r["noise"] == "clean" for r in noisy] == [r["noise"] == "clean" for r in mixed]  # the same rows
    for clean, row in zip(train, noisy, strict=True):
        if row["noise"] != "clean":
            assert row["id"] == f"{clean['id']}~{kind}@0.3" and row["output"] != clean["output"]


def test_filtering_keeps_the_top_share_in_order():
    level = [{"id": i} for i in "abcdefghij"]
    scores = dict(zip("abcdefghij", [5, 1, 9, 3, 7, 2, 8, 0, 6, 4], strict=True))
    kept = filtered_rows(level, scores, 0.7)
    assert [r["id"] for r in kept] == ["a", "c", "d", "e", "g", "i", "j"]
    assert len(filtered_rows(level, scores, 0.01)) == 1


def run(method, seed, nll, rate=5e-4, **extra):
    epochs = [{"epoch": e, "heldout_nll": x} for e, x in enumerate(nll)]
    return {"method": method, "noise": 0.3, "noise_type": "corrupted", "seed": seed, "learning_rate": rate,
            "epochs": epochs, "train_seconds": 100.0, "cores_used": 0.8, **extra}  # fmt: skip


def test_the_rate_is_the_one_with_the_lowest_validation_nll_after_the_last_epoch():
    runs = [run("sft", 0, [3, 2], rate) for rate in (5e-4, 1.5e-3)]
    runs[0]["epochs"][-1]["validation_nll"], runs[1]["epochs"][-1]["validation_nll"] = 2.0, 1.9
    assert choose_rate(runs) == 1.5e-3
    runs[1]["epochs"][-1]["validation_nll"] = 2.0  # a tie: the lower rate
    assert choose_rate(runs) == 5e-4


def test_summary_has_mean_std_and_per_seed_signs_against_sft():
    runs = [run("sft", s, [3.0, 2.0 + 0.1 * s]) for s in range(3)]
    runs += [run("poft", s, [3.0, x]) for s, x in enumerate([1.9, 2.2, 2.1])]
    table = summary_table(runs)
    assert "| corrupted 0.3 | sft | 0.0005 | 3 | 3.000 +- 0.000 | 2.100 +- 0.100 |  |  |" in table
    # poft - sft per seed: -0.1, +0.1, -0.1 -> mean -0.033, std 0.115
    assert (
        "| corrupted 0.3 | poft | 0.0005 | 3 | 3.000 +- 0.000 | 2.067 +- 0.153 | -0.033 +- 0.115 | -+- |"
        in table
    )
    runs[0]["chosen_from"] = {5e-4: 2.0, 1.5e-3: 2.1}
    assert "| corrupted 0.3 | sft | 0.0005: 2.000, 0.0015: 2.100 | 0.0005 |" in selection_table(runs)


def test_the_default_grid_is_sized_for_about_three_hours():
    """72 runs (3 conditions x 6 methods x (2 rates + 2 more seeds)) at the measured seconds per row."""
    from experiments.real_study import estimate_run_seconds

    config = RealStudyConfig()
    runs = (len(config.learning_rates) + len(config.seeds) - 1) * len(config.methods)
    hours = sum(runs * estimate_run_seconds(config, noise) for _, noise in config.conditions) / 3600
    assert runs * len(config.conditions) == 72 and 2.5 < hours < 3.5, hours
