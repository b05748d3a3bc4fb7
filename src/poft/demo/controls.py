"""Control runs behind RESULTS.md: where does PoFT's difference from SFT in `poft demo` come from?

PoFT differs from SFT in two ways at once: (1) each example's score is its MEAN token log-prob, so every
example weighs the same however long its answer (SFT weighs every token the same), and (2) each example
is weighted by tau = sigmoid(r_ref - r_theta). The control `poft_tau1` sets every reference score to +100,
so tau == 1 on every row and only (1) remains: PoFT minus poft_tau1 is the effect of the preference
weighting, poft_tau1 minus SFT the effect of the per-example normalisation. Same initial model, data,
seed and settings as the demo; per-skill greedy accuracy shows which skills each loss learns.

    python -m poft.demo.controls --output demo_output            # after `poft demo` (reuses its cache)
    python -m poft.demo.controls --output out --mini             # after `poft demo --mini --output out`
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from datasets import load_from_disk
from transformers import AutoTokenizer

from ..tiny import build_model
from .assets import asset_folder
from .config import MINI, DemoConfig
from .console import Progress, quiet_libraries
from .evaluate import HeldOut, evaluate, generate_answers
from .parallel import run_jobs
from .run import TARGET_INIT_SEED
from .tasks import make_splits
from .train import steps_per_run, train


def control_run(job: tuple, sink) -> dict:
    """Worker: one (method, noise) run from the demo's initial model; final metrics + per-skill accuracy."""
    config, method, noise, scores, tokenizer_path = job
    splits = make_splits(config.data_seed, config.n_train, config.n_aligned, config.n_test)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    data = load_from_disk(scores)
    objective = method
    if method == "poft_tau1":
        objective, data = "poft", data.map(lambda row: {"ref_score": 100.0})
    model = build_model(
        tokenizer, hidden_size=config.hidden_size, num_layers=config.num_layers, seed=TARGET_INIT_SEED
    )
    work = Path(config.output) / "work" / f"control-{method}-{noise}"
    train(
        model,
        tokenizer,
        data,
        objective=objective,
        epochs=config.epochs,
        seed=0,
        config=config,
        work_dir=work,
        sink=sink,
    )
    held_out = HeldOut.build(tokenizer, splits.test)
    answers = generate_answers(model, tokenizer, held_out.prompt_ids)
    right, total = collections.Counter(), collections.Counter()
    for example, answer in zip(splits.test, answers, strict=True):
        total[example.skill] += 1
        right[example.skill] += answer.strip() == example.answer
    skills = {skill: right[skill] / total[skill] for skill in sorted(total)}
    return {
        "method": method,
        "noise": noise,
        "metrics": evaluate(model, tokenizer, held_out),
        "skills": skills,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m poft.demo.controls", description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="demo_output", help="a finished `poft demo` output folder")
    parser.add_argument("--mini", action="store_true", help="the output of `poft demo --mini` (tests)")
    parser.add_argument("--noise-levels", type=float, nargs="+", help="default: the demo's (0 0.3 0.5)")
    parser.add_argument("--epochs", type=int, help="default: the demo's (5)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    quiet_libraries()
    config = DemoConfig(output=args.output, **(MINI if args.mini else {}))
    if args.epochs is not None:
        config.epochs = args.epochs
    folder = asset_folder(config)
    if not (folder / "assets.json").exists():
        sys.exit(f"{folder}: no cached aligned models; run `poft demo --output {args.output}` first")
    jobs = []
    for noise in args.noise_levels or config.noise_levels:
        scores = folder / "scores" / f"noise{noise}-seed0-chars{config.char_rate}-{config.normalization}"
        for method in ("sft", "poft_tau1", "poft"):
            jobs.append((config, method, noise, str(scores), str(folder / "target-tokenizer")))
    progress = Progress(len(jobs) * steps_per_run(config.n_train, config.batch_size, config.epochs))
    results = run_jobs(control_run, jobs, config.workers, progress)
    progress.close()
    skills = list(results[0]["skills"])
    print(f"| noise | method | accuracy | sampled accuracy | clean NLL | {' | '.join(skills)} |")
    print("|---|---|---|---|---|" + "---|" * len(skills))
    for r in results:
        m = r["metrics"]
        cells = " | ".join(f"{r['skills'][s]:.2f}" for s in skills)
        print(
            f"| {r['noise']:g} | {r['method']} | {m['accuracy']:.3f} | {m['sampled_accuracy']:.3f} | "
            f"{m['clean_nll']:.3f} | {cells} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
