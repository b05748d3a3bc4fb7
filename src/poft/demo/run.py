"""`poft demo`: the paper's noise experiment at toy scale, end to end through the library's code paths.

Top to bottom:
1. task data (tasks.py): six checkable skills; target-train / aligned-train / test prompts are disjoint;
2. aligned models (assets.py): two tiny LMs trained by SFT on clean data, two tokenizers, cached;
3. noisy data (noise.py) per noise level and seed; scored by the aligned models through
   `poft.scoring.score_dataset` (the code path of `poft score`), which writes `ref_score`;
4. the SAME initial target (one per seed) trained with SFT, PoFT and bi-PoFT, identical settings,
   evaluated on held-out prompts after every epoch (evaluate.py);
5. results.json, details.json, plots and report.md (report.py, plots.py).
bi-PoFT at noise 0 is skipped: every row is desirable there, so it is PoFT exactly.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, load_from_disk
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from ..loss import poft_weight
from ..scoring import score_dataset
from ..tiny import build_model
from .assets import Assets, asset_steps, build_assets
from .config import DemoConfig
from .console import Progress, quiet_libraries
from .evaluate import HeldOut, encode_all, evaluate, response_scores
from .noise import make_noisy_rows
from .parallel import run_jobs
from .plots import write_plots
from .report import write_report
from .tasks import make_splits
from .train import steps_per_run, train

TARGET_INIT_SEED = 1000  # the target's init seed is TARGET_INIT_SEED + training seed


def plan_runs(config: DemoConfig) -> list[tuple[int, float, str]]:
    """(seed, noise, method) for every target training run, in the order they run."""
    return [
        (seed, noise, method)
        for seed in range(config.seeds)
        for noise in config.noise_levels
        for method in config.methods
        if not (method == "bi_poft" and noise == 0)
    ]


def score_rows(rows: list[dict], assets: Assets, folder: Path, normalization: str):
    """The aligned models score the training rows through `poft score`'s code path (score_dataset)."""
    models = [f"{alias}={path}" for alias, path in assets.aligned.items()]
    with tqdm.external_write_mode():  # score_dataset prints a summary line; keep the progress bar intact
        return score_dataset(
            Dataset.from_list(rows), models, folder, normalization=normalization, dtype="float32",
            progress=False,
        )  # fmt: skip


def run_demo(config: DemoConfig) -> dict:
    """Run the whole demo; returns {"runs": [...]} as written to OUTPUT/results.json."""
    started = time.time()
    torch.set_num_threads(1)  # see parallel.py
    quiet_libraries()
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    splits = make_splits(config.data_seed, config.n_train, config.n_aligned, config.n_test)
    plan = plan_runs(config)
    total = asset_steps(config) + len(plan) * steps_per_run(config.n_train, config.batch_size, config.epochs)
    print(
        f"poft demo: {len(splits.train)} training rows, {len(splits.aligned)} aligned-model rows, "
        f"{len(splits.test)} held-out prompts; noise levels {list(config.noise_levels)}, methods "
        f"{list(config.methods)}, seeds 0..{config.seeds - 1}: {len(plan)} target runs x {config.epochs} epochs"
    )
    progress = Progress(total)
    progress.write("[1/4] aligned models")
    assets = build_assets(config, splits, progress)

    progress.write("[2/4] noisy training data, scored by the aligned models (poft score)")
    scored, score_folders = {}, {}
    for seed in range(config.seeds):
        for noise in config.noise_levels:
            progress.describe(f"scoring noise={noise} seed={seed}")
            rows = make_noisy_rows(splits.train, noise, seed=10_000 + seed, char_rate=config.char_rate)
            name = f"scores/noise{noise}-seed{seed}-chars{config.char_rate}-{config.normalization}"
            score_folders[seed, noise] = assets.folder / name
            scored[seed, noise] = score_rows(rows, assets, score_folders[seed, noise], config.normalization)
    _print_ref_scores(scored, progress)

    progress.write(f"[3/4] target runs: {len(plan)} x {config.epochs} epochs, evaluated after each epoch")
    progress.describe(f"target runs ({config.workers} workers)")
    jobs = [
        TargetJob(
            config,
            seed,
            noise,
            method,
            str(score_folders[seed, noise]),
            str(assets.folder / "target-tokenizer"),
        )
        for seed, noise, method in plan
    ]
    finished = run_jobs(
        train_target, jobs, config.workers, progress, on_done=lambda r: _report_run(r, progress)
    )
    runs = [run for result in finished for run in result["runs"]]
    weights = [w for result in finished for w in result["weights"]]
    progress.close()
    shutil.rmtree(out / "work", ignore_errors=True)  # the trainers' empty output folders

    print("[4/4] results, plots, report")
    results = {"runs": runs}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    details = {
        "config": config.to_dict(),
        "aligned_models": assets.aligned_metrics,
        "ref_scores": _ref_score_rows(scored),
        "poft_weights": weights,
        "wall_seconds": round(time.time() - started, 1),
    }
    (out / "details.json").write_text(json.dumps(details))
    plots = write_plots(out, results, details)
    write_report(out, results, details, plots)
    print(f"poft demo: done in {details['wall_seconds']:.0f} s; see {out / 'report.md'}")
    return results


@dataclass(frozen=True)
class TargetJob:
    """One target training run: (seed, noise, method) on the scored rows saved at `scores`."""

    config: DemoConfig
    seed: int
    noise: float
    method: str
    scores: str
    tokenizer: str


def train_target(job: TargetJob, sink) -> dict:
    """Worker: the seed's initial target trained with `job.method`; evaluated (and PoFT weights) every epoch."""
    config = job.config
    splits = make_splits(config.data_seed, config.n_train, config.n_aligned, config.n_test)
    tokenizer = AutoTokenizer.from_pretrained(job.tokenizer)
    data = load_from_disk(job.scores)
    model = build_model(
        tokenizer,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        seed=TARGET_INIT_SEED + job.seed,
    )
    held_out = HeldOut.build(tokenizer, splits.test)
    encoded = encode_all(tokenizer, list(data["messages"])) if job.method == "poft" else []
    runs, weights = [], []

    def on_epoch(epoch: int, trained) -> None:
        metrics = evaluate(trained, tokenizer, held_out, seed=job.seed)
        runs.append(
            {"method": job.method, "noise": job.noise, "seed": job.seed, "epoch": epoch, "metrics": metrics}
        )
        if job.method == "poft":
            tau = _weights(trained, tokenizer.pad_token_id, data, encoded, config, keep_rows=job.seed == 0)
            weights.append({"noise": job.noise, "seed": job.seed, "epoch": epoch, **tau})

    work_dir = Path(config.output) / "work" / f"{job.method}-{job.noise}-{job.seed}"
    train(
        model, tokenizer, data, objective=job.method, epochs=config.epochs, seed=job.seed, config=config,
        work_dir=work_dir, sink=sink, on_epoch=on_epoch,
    )  # fmt: skip
    return {"runs": runs, "weights": weights}


def _report_run(result: dict, progress: Progress) -> None:
    last = result["runs"][-1]
    m = last["metrics"]
    progress.write(
        f"  {last['method']:7s} noise={last['noise']:<4} seed={last['seed']}: accuracy {m['accuracy']:.3f}, "
        f"sampled {m['sampled_accuracy']:.3f}, clean NLL {m['clean_nll']:.3f}"
    )


def _weights(model, pad_id: int, data, encoded: list, config: DemoConfig, keep_rows: bool) -> dict:
    """PoFT's per-row weight tau = beta * sigmoid(beta * (r_ref - r_theta) - gamma) under the current model:
    mean per row kind, and (seed 0 only, to keep details.json small) every row's weight."""
    policy = response_scores(model, encoded, pad_id, config.normalization)
    ref = torch.tensor(list(data["ref_score"]), dtype=torch.float32)
    tau = poft_weight(policy, ref, beta=config.beta, gamma=config.gamma).tolist()
    kinds = list(data["noise_kind"])
    by_kind: dict[str, list[float]] = {}
    for kind, weight in zip(kinds, tau, strict=True):
        by_kind.setdefault(kind, []).append(weight)
    out = {"mean_weight": {k: sum(v) / len(v) for k, v in by_kind.items()}}
    if keep_rows:
        out |= {"kind": kinds, "weight": [round(w, 4) for w in tau]}
    return out


def _ref_score_rows(scored: dict) -> list[dict]:
    """ref_score per row with its noise kind, for the noisiest level of seed 0 (the Figure-2 analogue)."""
    out = []
    for (seed, noise), data in scored.items():
        if seed == 0:
            out.append(
                {"noise": noise, "kind": list(data["noise_kind"]), "ref_score": list(data["ref_score"])}
            )
    return out


def _print_ref_scores(scored: dict, progress: Progress) -> None:
    for (seed, noise), data in scored.items():
        if seed != 0:
            continue
        by_kind: dict[str, list[float]] = {}
        for kind, score in zip(data["noise_kind"], data["ref_score"], strict=True):
            by_kind.setdefault(kind, []).append(score)
        means = ", ".join(f"{k} {sum(v) / len(v):.2f} (n={len(v)})" for k, v in sorted(by_kind.items()))
        progress.write(f"  noise={noise}: mean ref_score by row kind: {means}")
