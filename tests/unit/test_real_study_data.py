"""The real-model study's data, options and report (experiments/real_study.py): the parts that need no model.

The study itself runs on real checkpoints (tests/real/test_real_study.py, RESULTS.md "Real models: SFT vs PoFT")."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from experiments.entry import parse_options
from experiments.real_study import (
    DEFAULT_ROWS,
    KINDS,
    PROG,
    RealStudyConfig,
    by_kind,
    main,
    noisy_training_rows,
    refuse_other_settings,
    results_table,
    split_rows,
)

ROWS = json.loads(Path(DEFAULT_ROWS).read_text(encoding="utf-8"))


def test_split_is_disjoint_seeded_and_sized():
    config = RealStudyConfig(n_train=64, n_heldout=24)
    train, heldout = split_rows(ROWS, config)
    assert len(train) == 64 and len(heldout) == 24
    assert not {r["id"] for r in train} & {r["id"] for r in heldout}
    assert split_rows(ROWS, config) == (train, heldout)
    assert split_rows(ROWS, RealStudyConfig(seed=1))[0] != train


def test_split_refuses_too_few_rows():
    with pytest.raises(ValueError, match="needs 250"):
        split_rows(ROWS, RealStudyConfig(n_train=200, n_heldout=50))


@pytest.mark.parametrize("noise", [0.0, 0.3, 0.5])
def test_noise_replaces_the_share_half_of_each_kind(noise):
    config = RealStudyConfig()
    train, _ = split_rows(ROWS, config)
    noisy = noisy_training_rows(train, noise, config)
    kinds = [r["noise"] for r in noisy]
    n_noisy = round(noise * len(train))
    assert len(noisy) == len(train) and sum(k != "clean" for k in kinds) == n_noisy
    assert abs(kinds.count("wrong_prompt") - kinds.count("corrupted")) <= 1
    for clean, row in zip(train, noisy, strict=True):
        assert row["instruction"] == clean["instruction"]  # the prompt is kept, the answer replaced
        assert row["label"] == (row["noise"] == "clean")
        if row["noise"] == "clean":
            assert row["output"] == clean["output"] and row["id"] == clean["id"]
        else:
            assert row["output"] != clean["output"] and row["id"] == f"{clean['id']}~{row['noise']}"
        if row["noise"] == "wrong_prompt":
            assert row["output"] in {r["output"] for r in train}
    assert noisy_training_rows(train, noise, config) == noisy  # seeded


def test_clean_rows_are_shared_between_levels():
    """Each distinct row is scored once: the clean rows of a noisy level are the noise-0 rows themselves."""
    config = RealStudyConfig()
    train, _ = split_rows(ROWS, config)
    clean = {r["id"]: r for r in noisy_training_rows(train, 0.0, config)}
    for row in noisy_training_rows(train, 0.3, config):
        if row["noise"] == "clean":
            assert clean[row["id"]] == row


def test_by_kind_means_per_kind():
    got = by_kind(np.array([1.0, 2.0, 4.0, 8.0]), ["clean", "corrupted", "clean", "wrong_prompt"])
    assert got == {"clean": 2.5, "wrong_prompt": 8.0, "corrupted": 2.0}
    assert list(got) == [k for k in KINDS if k in got]


def test_table_has_every_epoch_and_the_best():
    run = {"noise": 0.3, "method": "poft", "train_seconds": 12.0, "ref_score_by_kind": {"clean": -1.0},
           "epochs": [{"epoch": 0, "heldout_nll": 3.0, "tau": {"clean": 0.8}, "r_theta": {"clean": -2.0}},
                      {"epoch": 1, "heldout_nll": 2.0}, {"epoch": 2, "heldout_nll": 2.5}]}  # fmt: skip
    table = results_table({"runs": [run]})
    assert "| 0.3 | poft | 3.000 | 2.000 | 2.500 | 1 | 12 |" in table
    assert "| 0.3 | poft | 0 | 0.800 | nan | nan | -2.000 | nan | nan |" in table


def parse_args(argv: list[str]) -> RealStudyConfig:
    return parse_options(RealStudyConfig, argv, PROG)


def test_command_line_and_config_file_overrides(tmp_path):
    config = parse_args(["--n_train", "8", "--noise_levels", "0.5", "--methods", "poft", "--full_finetune"])
    assert (config.n_train, config.noise_levels, config.methods, config.full_finetune) == (
        8,
        [0.5],
        ["poft"],
        True,
    )
    assert parse_args([]) == RealStudyConfig()
    assert DEFAULT_ROWS.is_file() and DEFAULT_ROWS.parent.name == "data"  # data/, not a test fixture
    yaml = tmp_path / "study.yaml"
    yaml.write_text("epochs: 5\nnoise_levels: [0.0, 0.5]\nlearning_rate: 1.0e-4\n")
    config = parse_args(["--config", str(yaml), "--epochs", "2"])  # the command line overrides the file
    assert (config.epochs, config.noise_levels, config.learning_rate) == (2, [0.0, 0.5], 1e-4)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--n-train", "0"], 2, "--n_train must be at least 1, got 0"),
        (["--noise_levels", "1"], 2, "shares in [0, 1)"),
        (["--dtype", "float16"], 2, "invalid choice: 'float16'"),
        (["--bogus"], 2, "unrecognized arguments: --bogus"),
        (["--models_dir", "/nonexistent"], 1, "real models not found: /nonexistent/gemma-3-270m"),
    ],
)
def test_a_user_error_is_one_line_not_a_traceback(argv, code, message, capsys, tmp_path):
    if code == 2:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
    else:
        assert main([*argv, "--output", str(tmp_path / "study")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{PROG}: error: ") and message in err and err.count("\n") == 1, err


def test_a_folder_made_with_other_settings_is_refused(tmp_path):
    """Its finished runs would be reused and reported as the new configuration's."""
    made = RealStudyConfig(output=str(tmp_path), epochs=3)
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(made)))
    refuse_other_settings(tmp_path, RealStudyConfig(output=str(tmp_path / "moved"), epochs=3))  # same study
    with pytest.raises(ValueError, match=r"other settings \(epochs, learning_rate\)"):
        refuse_other_settings(tmp_path, RealStudyConfig(output=str(tmp_path), epochs=4, learning_rate=1e-4))
    refuse_other_settings(tmp_path / "new", made)  # no folder yet: nothing to refuse


def test_ctrl_c_says_what_is_kept_and_how_to_resume(monkeypatch, capsys, tmp_path):
    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr("experiments.real_study.run_study", interrupted)
    assert main(["--output", str(tmp_path / "study")]) == 130
    assert capsys.readouterr().err == (
        f"\n{PROG}: interrupted; the scores and the finished runs in {tmp_path / 'study'} are kept: the same command "
        "resumes from them\n"
    )
