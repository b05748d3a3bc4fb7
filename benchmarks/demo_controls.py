"""Control runs behind RESULTS.md: where does PoFT's difference from SFT in `poft demo` come from?

PoFT differs from SFT in two ways at once: (1) each example's score is its MEAN token log-prob, so every
example weighs the same however long its answer (SFT weighs every token the same), and (2) each example
is weighted by tau = sigmoid(r_ref - r_theta). The control `poft_tau1` sets every reference score to +100,
so tau == 1 on every row and only (1) remains: PoFT minus poft_tau1 is the effect of the preference
weighting, poft_tau1 minus SFT the effect of the per-example normalisation. Same initial model, data,
seed and settings as the demo; per-skill greedy accuracy shows which skills each loss learns.

    python benchmarks/demo_controls.py --output demo_output            # after `poft demo` (reuses its cache)
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import load_from_disk  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from poft.demo.assets import asset_folder  # noqa: E402
from poft.demo.config import DemoConfig  # noqa: E402
from poft.demo.evaluate import HeldOut, evaluate, generate_answers  # noqa: E402
from poft.demo.parallel import run_jobs  # noqa: E402
from poft.demo.run import TARGET_INIT_SEED, quiet_libraries  # noqa: E402
from poft.demo.tasks import make_splits  # noqa: E402
from poft.demo.train import Progress, steps_per_run, train  # noqa: E402
from poft.tiny import build_model  # noqa: E402


def control_run(job: tuple, sink) -> dict:
    """Worker: one (method, noise) run from the demo's initial model; final metrics + per-skill accuracy."""
    config, method, noise, scores, tokenizer_path = job
    splits = make_splits(config.data_seed, config.n_train, config.n_aligned, config.n_test)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    data = load_from_disk(scores)
    loss_type = method
    if method == "poft_tau1":
        loss_type, data = "poft", data.map(lambda row: {"ref_score": 100.0})
    model = build_model(
        tokenizer, hidden_size=config.hidden_size, num_layers=config.num_layers, seed=TARGET_INIT_SEED
    )
    work = Path(config.output) / "work" / f"control-{method}-{noise}"
    train(
        model,
        tokenizer,
        data,
        loss_type=loss_type,
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="demo_output", help="a finished `poft demo` output folder")
    parser.add_argument("--noise-levels", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    parser.add_argument("--epochs", type=int, default=DemoConfig.epochs)
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet_libraries()
    config = DemoConfig(output=args.output, epochs=args.epochs)
    folder = asset_folder(config)
    if not (folder / "assets.json").exists():
        sys.exit(f"{folder}: no cached aligned models; run `poft demo --output {args.output}` first")
    jobs = []
    for noise in args.noise_levels:
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
