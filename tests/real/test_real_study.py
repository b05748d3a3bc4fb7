"""`python -m experiments.real_study` (experiments/real_study.py), the SFT-vs-PoFT study on real checkpoints, at the smallest size.

The study's numbers are in RESULTS.md ("Real models: SFT vs PoFT"); here the command must run end to end on the
real models (score, train with LoRA, evaluate after the epoch, answer), write its table and plot, resume without
retraining, and its held-out NLL must be the real model's: checked against a plain full-logits forward pass."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from conftest import ENV, GEMMA_TEMPLATE, reference_scores

ROOT = Path(__file__).resolve().parents[2]


def run_study(args: list[str]) -> None:
    """`python -m experiments.real_study ARGS` from the repository root, in a subprocess as a user runs it."""
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "experiments.real_study", *args], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=3600)  # fmt: skip
    print(
        f"$ python -m experiments.real_study {' '.join(args)}  ({time.time() - start:.0f} s)\n{result.stdout[-4000:]}"
    )
    assert result.returncode == 0, result.stderr[-6000:]


def test_held_out_nll_equals_a_plain_forward_pass(real_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from experiments.real_study import DEFAULT_ROWS, alpaca_messages, response_logprobs
    from poft.chat import ChatFormat

    rows = json.loads(DEFAULT_ROWS.read_text())[:4]
    template = GEMMA_TEMPLATE.read_text()
    tokenizer = AutoTokenizer.from_pretrained(real_models["gemma"])
    tokenizer.chat_template = template
    model = AutoModelForCausalLM.from_pretrained(real_models["gemma"], dtype=torch.float32)
    chat = ChatFormat.from_tokenizer(tokenizer, "gemma")
    got = response_logprobs(model, chat, [alpaca_messages(r) for r in rows], max_length=256, autocast=False)
    expected, _ = reference_scores(real_models["gemma"], rows, "<end_of_turn>", template)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_study_runs_end_to_end_and_resumes(real_models, tmp_path):
    """The smallest grid that has each kind of method (SFT on the chunked path, PoFT, tau fixed, filtering by
    the combined score; DFT and filtering by r_ref take the same paths and are tested on tiny models): 2 rates
    chosen on the validation split (first seed), a second seed at the chosen rate, one noise type; then a
    rerun reads every run back."""
    out = tmp_path / "study"
    args = ["--output", str(out), "--n_train", "8", "--n_heldout", "4", "--n_validation", "4", "--n_answers", "1",
            "--epochs", "1", "--batch_size", "4", "--noise_levels", "0.5", "--noise_types", "mixed",
            "--seeds", "0", "1", "--lr_factors", "0.5", "1", "--max_new_tokens", "8",
            "--methods", "sft", "poft", "poft_fixed_tau", "filter_combined",
            "--models_dir", str(real_models["gemma"].parent)]  # fmt: skip
    run_study(args)
    results = json.loads((out / "results.json").read_text())
    methods = ["sft", "poft", "poft_fixed_tau", "filter_combined"]
    assert [(r["noise"], r["method"], r["seed"]) for r in results["runs"]] == [
        (0.5, m, s) for m in methods for s in (0, 1)
    ]
    assert len(results["all_runs"]) == 4 * 3  # each method: 2 rates with seed 0, the chosen one with seed 1
    for run in results["runs"]:
        epochs = run["epochs"]
        assert [e["epoch"] for e in epochs] == [0, 1]
        assert all(np.isfinite(e["heldout_nll"]) and e["heldout_nll"] > 0 for e in epochs)
        assert np.isfinite(epochs[-1]["validation_nll"]) and "validation_nll" not in epochs[0]
        assert (
            epochs[1]["heldout_nll"] != epochs[0]["heldout_nll"]
        )  # the run trained (2 steps: the 1st is warm-up at lr 0)
        assert set(epochs[1]["tau"]) == {"clean", "wrong_prompt", "corrupted"}
        assert all(0 < t < 1 for t in epochs[1]["tau"].values())
        assert len(run["answers"]) == 1 and isinstance(run["answers"][0], str)
        assert run["cpu_seconds"] > 0 and run["train_seconds"] > 0 and "load_start" in run
        tried = {float(rate): nll for rate, nll in run["chosen_from"].items()}
        assert run["learning_rate"] == min(tried, key=lambda rate: (tried[rate], rate))
        assert run["n_train_rows"] == (6 if run["method"].startswith("filter") else 8)  # 0.7 of 8 kept
    assert (out / "curves.png").stat().st_size > 0 and "| mixed 0.5 | poft |" in (
        out / "table.md"
    ).read_text()
    name = f"mixed0.5_poft_lr{results['runs'][2]['learning_rate']:g}_s1.json"
    before = (out / "runs" / name).read_text()
    run_study(args)  # finished runs are read back, not trained again (their train_seconds would differ)
    assert (out / "runs" / name).read_text() == before
