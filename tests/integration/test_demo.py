"""`python -m experiments.demo --mini` end to end through its entry point: artefacts exist and are well formed;
the tables of two fresh processes are identical; the learning-rate tuning runs on validation prompts (seconds,
offline)."""

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from datasets import Dataset  # noqa: E402

from experiments.demo import main  # noqa: E402
from experiments.demo.config import MINI, DemoArguments, DemoConfig  # noqa: E402
from experiments.demo.methods import METHODS, method_rows  # noqa: E402
from experiments.demo.noise import corrupt_chars, make_noisy_rows  # noqa: E402
from experiments.demo.run import plan_runs  # noqa: E402
from experiments.demo.tasks import SKILLS, is_correct, make_splits  # noqa: E402
from experiments.entry import parse_options  # noqa: E402
from experiments.publish import main as publish_main  # noqa: E402
from experiments.publish import read_block  # noqa: E402
from experiments.tune import main as tune_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_splits_are_disjoint_and_deterministic():
    a, b = make_splits(3, 120, 60, 30, 20, 90), make_splits(3, 120, 60, 30, 20, 90)
    assert a == b
    prompts = [{e.prompt for e in split} for split in (a.train, a.aligned, a.test, a.val, a.pretrain)]
    assert sum(map(len, prompts)) == 320 == len(set().union(*prompts))
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


def test_method_rows_filter_by_ref_score_and_fix_tau():
    data = Dataset.from_list([{"ref_score": s, "i": i} for i, s in enumerate([-1.0, -9.0, -0.5, -3.0, -7.0])])
    assert method_rows(METHODS["top40_sft"], data)["i"] == [0, 2]  # the top 40 %, kept in input order
    assert method_rows(METHODS["poft_fixed_tau"], data)["ref_score"] == [100.0] * 5
    assert method_rows(METHODS["poft"], data)["ref_score"] == data["ref_score"]


def test_plan_skips_bi_poft_without_noise_and_tuning_labels_rates():
    config = DemoConfig(noise_levels=(0.0, 0.5), methods=("sft", "bi_poft_soft"))
    assert [(p.noise, p.method) for p in plan_runs(config)] == [
        (0.0, "sft"),
        (0.5, "sft"),
        (0.5, "bi_poft_soft"),
    ]
    tuned = plan_runs(config, grid=(1e-3, 1e-2))
    assert [p.label for p in tuned if p.noise == 0.5] == ["sft@0.001", "sft@0.01", "bi_poft_soft@0.001",
                                                          "bi_poft_soft@0.01"]  # fmt: skip
    assert {p.learning_rate for p in tuned} == {1e-3, 1e-2}


def test_demo_mini_writes_well_formed_artefacts(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--mini", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| noise | method |" in printed

    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"runs"}
    runs = results["runs"]
    assert {(r["method"], r["noise"]) for r in runs} == {(m, 0.5) for m in MINI["methods"]}
    for run in runs:
        assert set(run) == {"method", "noise", "seed", "epoch", "learning_rate", "metrics"}
        assert isinstance(run["seed"], int) and run["epoch"] == 1
        assert set(run["metrics"]) == {"accuracy", "sampled_accuracy", "clean_nll"}
        assert 0.0 <= run["metrics"]["accuracy"] <= 1.0
        assert 0.0 <= run["metrics"]["sampled_accuracy"] <= 1.0
        assert math.isfinite(run["metrics"]["clean_nll"]) and run["metrics"]["clean_nll"] > 0
    details = json.loads((out / "details.json").read_text())
    assert set(details["models"]) == {"base", "a", "b"}

    for name in ("accuracy_vs_epoch.png", "ref_scores.png", "poft_weights.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    for name in ("accuracy_vs_epoch.png", "ref_scores.png", "poft_weights.png", "| bi_poft_soft |"):
        assert name in report

    # RESULTS.md's block gets exactly the table the command printed (python -m experiments.publish)
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text(
        "# Results\n\n<!-- poft-demo:default begin -->\n<!-- poft-demo:default end -->\nkept\n"
    )
    assert publish_main(["--output", str(out), "--results", str(results_md)]) == 0
    block = read_block(results_md.read_text(), "default")
    assert block.startswith("| noise | method |") and "\n" + block + "\n" in printed
    assert results_md.read_text().endswith("end -->\nkept\n")

    # the second run reuses the cached base, aligned models and scores, and gives the same table
    assert main(["--mini", "--output", str(out)]) == 0
    again = capsys.readouterr().out
    assert "reusing the base and aligned models" in again
    assert f"{len(MINI['methods'])} of {len(MINI['methods'])} runs reused" in again
    assert _table(again) == _table(printed)


def test_tune_mini_evaluates_validation_prompts_and_chooses_a_rate_per_method(tmp_path, capsys):
    out = tmp_path / "tune"
    assert (
        tune_main(["--output", str(out), "--mini", "--methods", "sft", "poft", "--grid", "1e-3", "1e-2"]) == 0
    )
    chosen = json.loads((out / "tune.json").read_text())
    assert set(chosen) == {"sft", "poft"}
    for c in chosen.values():
        assert c["learning_rate"] in (1e-3, 1e-2)
        assert c["val_accuracy"] == max(c["by_rate"].values())
    assert "Val metrics after the last epoch" in (out / "report.md").read_text()


def _table(printed: str) -> list[str]:
    return [line for line in printed.splitlines() if line.startswith("| ")]


@pytest.mark.slow
def test_two_fresh_processes_with_different_hash_seeds_give_identical_tables(tmp_path):
    """Reproducibility: the same reduced configuration (`python -m experiments.demo --mini`: the base, both aligned
    models, scoring, sft / poft / top40_sft / bi_poft_soft), run from scratch (no shared cache) in two fresh processes
    with different PYTHONHASHSEED, prints the same results table, and writes the same metrics, reference scores and
    PoFT weights to the last bit. The two processes run at the same time: half the wall time, same check. They start
    from the repository root, as `make demo` does; the second trains on a pool of 2 spawned workers (which must
    import `experiments` too), the first in-process: the numbers do not depend on the workers."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    procs = {
        seed: subprocess.Popen(
            [sys.executable, "-m", "experiments.demo", "--mini", "--workers", workers, "--output",
             str(tmp_path / f"run{seed}")],
            cwd=ROOT,
            env={**env, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed, workers in (("1", "1"), ("2", "2"))
    }  # fmt: skip
    printed = {}
    for seed, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        printed[seed] = stdout
    tables = [_table(printed[seed]) for seed in ("1", "2")]
    assert tables[0] and tables[0] == tables[1]
    assert any("| poft |" in line for line in tables[0])
    for name in ("results.json", "details.json"):
        a, b = (json.loads((tmp_path / f"run{seed}" / name).read_text()) for seed in ("1", "2"))
        if name == "details.json":  # everything but the wall time: models, ref_scores, poft_weights, config
            a.pop("wall_seconds"), b.pop("wall_seconds")
            for key in ("output", "workers"):
                a["config"].pop(key), b["config"].pop(key)
            assert a["poft_weights"] and a["ref_scores"]
        assert a == b, name  # floats compared exactly (json keeps all 17 digits)


def test_claims_table_differences_and_drops_per_seed():
    """poft minus sft per seed: seed 0: 0.5 - 0.4 = +0.1, seed 1: 0.6 - 0.3 = +0.3 -> +0.200 ± 0.100 (2/2);
    drop from best: sft seed 0 curve [0.2, 0.6, 0.4] -> 0.2, seed 1 [0.5, 0.3, 0.3] -> 0.2; poft never drops."""
    from experiments.demo.report import claims_table

    curves = {("sft", 0): [0.2, 0.6, 0.4], ("sft", 1): [0.5, 0.3, 0.3], ("poft", 0): [0.1, 0.3, 0.5],
              ("poft", 1): [0.2, 0.4, 0.6]}  # fmt: skip
    runs = [
        {"method": m, "noise": 0.3, "seed": s, "epoch": e + 1, "metrics": {"accuracy": a}}
        for (m, s), accs in curves.items()
        for e, a in enumerate(accs)
    ]
    lines = claims_table(runs)
    assert (
        "| PoFT vs SFT (paper: parity on clean data, a gap growing with noise): poft minus sft | +0.200 ± 0.100 (2/2 seeds) |"
        in lines
    )
    assert "| sft | 0.200 ± 0.000 |" in lines and "| poft | 0.000 ± 0.000 |" in lines


def test_demo_options_keep_the_preset_unless_given_and_refuse_bad_values(capsys):
    """`python -m experiments.demo`'s options (DemoArguments) over the presets; a bad value is one line, exit 2."""
    args = parse_options(DemoArguments, ["--mini", "--noise-levels", "0", "0.3", "--learning-rate", "1e-3",
                                         "--rebuild", "--output", "d", "--seeds", "2", "--epochs", "3"], "demo")  # fmt: skip
    assert args == DemoArguments(output="d", mini=True, seeds=2, noise_levels=[0.0, 0.3], epochs=3,
                                 learning_rate=1e-3, rebuild=True)  # fmt: skip
    config = args.config()
    assert (config.noise_levels, config.seeds, config.epochs, config.n_train) == (
        (0.0, 0.3),
        2,
        3,
        MINI["n_train"],
    )
    assert config.learning_rate == 1e-3 and config.rebuild
    assert DemoArguments(full=True).config().seeds == 3 and DemoArguments().config() == DemoConfig()
    for argv, message in ((["--full", "--mini"], "not allowed with argument --full"),
                          (["--epochs", "0"], "--epochs must be at least 1"),
                          (["--noise-levels", "1.5"], "shares in [0, 1)")):  # fmt: skip
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert (
            message in err and err.startswith("python -m experiments.demo: error: ") and err.count("\n") == 1
        )
