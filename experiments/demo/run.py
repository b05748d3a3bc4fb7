"""`python -m experiments.demo`: the paper's noise experiment at toy scale, end to end through the library's
code paths.

Top to bottom:
1. task data (tasks.py): six checkable skills; pretraining / aligned / target-train / validation / test prompts
   are disjoint;
2. the target's pretrained base and two aligned models clearly stronger than it (assets.py), cached;
3. noisy data (noise.py) per noise level and seed, scored by the aligned models through
   `poft.scoring.score_dataset` (the code path of `poft score`), which writes `ref_score`;
4. the SAME initial target (the base) trained with every method (methods.py) for the same number of epochs,
   each at its own learning rate (config.LEARNING_RATES, chosen on the validation prompts by
   `python -m experiments.tune`), evaluated on held-out test prompts after every `eval_every`-th epoch and the
   last (evaluate.py; evaluation leaves the training untouched: generation restores the RNG state);
5. results.json, details.json, plots and report.md (report.py, plots.py).
bi-PoFT at noise 0 is skipped: every row is desirable there, so it is PoFT exactly.
Every number is a function of the configuration: runs are seeded, single-threaded, and the tables of two
fresh processes are identical (tests/integration/test_demo.py checks it across PYTHONHASHSEED).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, load_from_disk
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from poft.configs import ScoreConfig
from poft.loss import poft_weight
from poft.scoring import score_dataset

from ..entry import run_main
from .assets import Assets, asset_steps, build_assets, splits_of
from .config import DemoArguments, DemoConfig
from .console import Progress, quiet_libraries
from .evaluate import HeldOut, encode_all, evaluate, response_scores
from .methods import METHODS, method_rows
from .noise import make_noisy_rows
from .parallel import Workers, run_jobs, worker_pool
from .plots import write_plots
from .report import write_report
from .tasks import Splits
from .train import steps_per_run, train

PROG = "python -m experiments.demo"


def main(argv: list[str] | None = None) -> int:
    """`python -m experiments.demo [--full | --mini] [--output DIR] [...]` (`make demo`: the default run)."""
    return run_main(PROG, DemoArguments, lambda args: run_demo(args.config()), argv, interrupted,
                    description="offline end-to-end experiment: SFT, PoFT and baselines on noisy data, with a report")  # fmt: skip


def interrupted(args: DemoArguments) -> str:
    return (
        f"interrupted; the base, aligned models, scores and finished runs cached in {args.output}/assets are "
        "kept: the same command reuses them"
    )


@dataclass(frozen=True)
class Planned:
    """One target run: `method` at `learning_rate` on the rows of (seed, noise); `label` names it in tables."""

    seed: int
    noise: float
    method: str
    learning_rate: float
    label: str


def plan_runs(config: DemoConfig, grid: tuple[float, ...] | None = None) -> list[Planned]:
    """Every target training run, in the order they run: each method at its learning rate, or (tuning) at
    every learning rate of `grid`, labelled `method@lr`."""
    plan = []
    for seed in range(config.seeds):
        for noise in config.noise_levels:
            for method in config.methods:
                if METHODS[method].needs_noise and noise == 0:
                    continue
                if grid is None:
                    plan.append(Planned(seed, noise, method, config.lr(method), method))
                else:
                    plan += [Planned(seed, noise, method, lr, f"{method}@{lr:g}") for lr in grid]
    return plan


def run_rows(config: DemoConfig, method: str) -> int:
    """How many rows `method` trains on (for the progress bar's total)."""
    keep = METHODS[method].keep_top
    return config.n_train if keep is None else int(keep * config.n_train + 0.5)


def score_rows(rows: list[dict], assets: Assets, folder: Path, normalization: str):
    """The aligned models score the training rows through `poft score`'s code path (score_dataset)."""
    models = [f"{alias}={path}" for alias, path in assets.aligned.items()]
    with tqdm.external_write_mode():  # score_dataset prints a summary line; keep the progress bar intact
        config = ScoreConfig(
            dataset="demo rows",
            model=models,
            output=str(folder),
            normalization=normalization,
            dtype="float32",
            progress=False,
        )
        return score_dataset(config, Dataset.from_list(rows))


def run_demo(config: DemoConfig, grid: tuple[float, ...] | None = None) -> dict:
    """Run the whole demo; returns {"runs": [...]} as written to OUTPUT/results.json.

    With `grid` (python -m experiments.tune) every method runs at every learning rate of the grid."""
    started = time.time()
    torch.set_num_threads(1)  # see parallel.py
    quiet_libraries()
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    splits = splits_of(config)
    plan = plan_runs(config, grid)
    steps = sum(steps_per_run(run_rows(config, p.method), config.batch_size, config.epochs) for p in plan)
    print(
        f"demo: {len(splits.train)} training rows, {len(splits.aligned)} aligned-model rows, "
        f"{len(splits.pretrain)} pretraining conversations, {len(splits.val)} validation and "
        f"{len(splits.test)} test prompts; noise levels {list(config.noise_levels)}, methods "
        f"{list(config.methods)}, seeds 0..{config.seeds - 1}: {len(plan)} target runs x {config.epochs} epochs"
    )
    progress = Progress(asset_steps(config) + steps)
    with worker_pool(config.workers) as workers:  # one pool for the models and the target runs
        assets, runs, weights, scored = _train_all(config, splits, plan, progress, workers)
    progress.close()
    shutil.rmtree(out / "work", ignore_errors=True)  # the trainers' empty output folders

    print("[4/4] results, plots, report")
    results = {"runs": runs}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    details = {
        "config": config.to_dict(),
        "models": assets.metrics,
        "ref_scores": _ref_score_rows(scored),
        "poft_weights": weights,
        "wall_seconds": round(time.time() - started, 1),
    }
    (out / "details.json").write_text(json.dumps(details))
    plots = write_plots(out, results, details)
    write_report(out, results, details, plots)
    print(f"demo: done in {details['wall_seconds']:.0f} s; see {out / 'report.md'}")
    return results


def _train_all(
    config: DemoConfig,
    splits: Splits,
    plan: list[Planned],
    progress: Progress,
    workers: Workers | None,
) -> tuple[Assets, list[dict], list[dict], dict]:
    """Steps 1-3 (models, scores, target runs) on `workers`: (assets, evaluated runs, PoFT weights, scored rows)."""
    progress.write("[1/4] the target's pretrained base and the aligned models")
    assets = build_assets(config, splits, progress, workers)

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

    progress.write(
        f"[3/4] target runs: {len(plan)} x {config.epochs} epochs, evaluated on the {config.eval_split} prompts "
        f"after every {config.eval_every} epoch(s) and the last"
    )
    progress.describe(f"target runs ({config.workers} workers)")
    jobs = [
        TargetJob(config, p, str(score_folders[p.seed, p.noise]), str(assets.folder / "target-tokenizer"),
                  str(assets.base))
        for p in plan
    ]  # fmt: skip
    finished = _cached_runs(jobs, assets.folder, progress)
    to_run = [i for i, result in enumerate(finished) if result is None]
    if len(to_run) < len(jobs):
        progress.write(
            f"  {len(jobs) - len(to_run)} of {len(jobs)} runs reused from {assets.folder / 'runs'}"
        )
    on_done = lambda r: _report_run(r, progress)  # noqa: E731
    fresh = run_jobs(
        train_target, [jobs[i] for i in to_run], workers, progress, on_done=on_done, cost=_job_steps
    )  # longest first: the last runs to start are the short top-40 % ones, so no core idles at the end
    for i, result in zip(to_run, fresh, strict=True):
        finished[i] = result
    runs = [run for result in finished for run in result["runs"]]
    weights = [w for result in finished for w in result["weights"]]
    return assets, runs, weights, scored


@dataclass(frozen=True)
class TargetJob:
    """One target training run (`run`) on the scored rows saved at `scores`, starting from the `base` folder."""

    config: DemoConfig
    run: Planned
    scores: str
    tokenizer: str
    base: str

    @property
    def cache(self) -> Path:
        return _run_cache_path(self, Path(self.scores).parent.parent)


def train_target(job: TargetJob, sink) -> dict:
    """Worker: the base trained with the job's method; evaluated (and PoFT's weights measured) every eval_every epochs."""
    config, run = job.config, job.run
    method = METHODS[run.method]
    splits = splits_of(config)
    tokenizer = AutoTokenizer.from_pretrained(job.tokenizer)
    data = method_rows(method, load_from_disk(job.scores))
    model = AutoModelForCausalLM.from_pretrained(job.base)
    held_out = HeldOut.build(tokenizer, splits.val if config.eval_split == "val" else splits.test)
    measure_weights = run.method == "poft"
    encoded = encode_all(tokenizer, list(data["messages"])) if measure_weights else []
    runs, weights = [], []

    def on_epoch(epoch: int, trained) -> None:
        if epoch % config.eval_every and epoch != config.epochs:
            return
        metrics = evaluate(trained, tokenizer, held_out, seed=run.seed)
        runs.append({"method": run.label, "noise": run.noise, "seed": run.seed, "epoch": epoch,
                     "learning_rate": run.learning_rate, "metrics": metrics})  # fmt: skip
        if measure_weights:
            tau = _weights(trained, tokenizer.pad_token_id, data, encoded, config, keep_rows=run.seed == 0)
            weights.append({"noise": run.noise, "seed": run.seed, "epoch": epoch, **tau})

    work_dir = Path(config.output) / "work" / f"{run.label}-{run.noise}-{run.seed}"
    train(
        model, tokenizer, data, objective=method.objective, epochs=config.epochs,
        learning_rate=run.learning_rate, seed=run.seed, config=config, work_dir=work_dir, sink=sink,
        on_epoch=on_epoch, loss_type=method.loss_type, bi_poft_variant=method.bi_poft_variant,
    )  # fmt: skip
    result = {"runs": runs, "weights": weights}
    job.cache.write_text(json.dumps(result))  # as each run ends, so a killed demo keeps its finished runs
    return result


def _run_cache_path(job: TargetJob, folder: Path) -> Path:
    """A finished run is a pure function of these settings (seeded, single-threaded): its results are cached
    under the assets' folder, so `--full` after the default run, or a new learning rate for one method,
    trains only what changed. The settings that cannot change a run's numbers are left out of the key."""
    settings = {k: v for k, v in job.config.to_dict().items() if k not in _NOT_IN_RUN_KEY}
    blob = json.dumps({"settings": settings, "run": dataclasses.asdict(job.run)}, sort_keys=True)
    folder = folder / "runs"
    folder.mkdir(exist_ok=True)
    return (
        folder
        / f"{job.run.label}-{job.run.noise}-{job.run.seed}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.json"
    )


_NOT_IN_RUN_KEY = {"output", "seeds", "noise_levels", "methods", "rebuild", "workers", "learning_rate"}


def _job_steps(job: TargetJob) -> int:
    return steps_per_run(run_rows(job.config, job.run.method), job.config.batch_size, job.config.epochs)


def _cached_runs(jobs: list[TargetJob], folder: Path, progress: Progress) -> list[dict | None]:
    """Each job's cached result, or None; the progress bar is advanced by the cached runs' steps."""
    out = []
    for job in jobs:
        path = _run_cache_path(job, folder)
        out.append(json.loads(path.read_text()) if path.exists() else None)
        if out[-1] is not None:
            progress.bar.update(_job_steps(job))
    return out


def _report_run(result: dict, progress: Progress) -> None:
    last = result["runs"][-1]
    m = last["metrics"]
    progress.write(
        f"  {last['method']:14s} noise={last['noise']:<4} seed={last['seed']}: accuracy {m['accuracy']:.3f}, "
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
