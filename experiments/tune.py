"""Learning-rate choice for the demo: every method at every rate of a small grid, judged on VALIDATION prompts.

PoFT's gradient is the cross-entropy times tau (~0.2-0.8), SFT's is not, DFT's is scaled by token probabilities
and top-40 % filtering trains on fewer rows: one shared learning rate would favour some of them. So each method
gets the rate of `TUNE_GRID` with the best validation accuracy after the last epoch, averaged over the noise
levels (by default the middle one, 0.3: the grid at every level did not fit this machine's time; one rate per
method, not per noise level: a user does not know the noise level of their data). Seed 0, the default run's data,
models and epochs, evaluated after the last epoch only; the test prompts are never evaluated here. The chosen rates are
copied into config.LEARNING_RATES by hand (with this table in RESULTS.md), so `make demo` does not re-tune.

    python -m poft.demo.tune --output demo_tune          # ~3x the default run's target training
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .config import ALL_METHODS, MINI, TUNE_GRID, DemoConfig
from .report import aggregate, method_order
from .run import run_demo


def choose(runs: list[dict]) -> dict[str, dict]:
    """method -> {"learning_rate", "val_accuracy" (mean over noise levels, last epoch), "by_rate"}."""
    stats = aggregate(runs)
    last = max(e for _, _, e in stats)
    by_method: dict[str, dict[float, list[float]]] = {}
    for noise, label, epoch in stats:
        if epoch == last:
            method, rate = label.split("@")
            by_method.setdefault(method, {}).setdefault(float(rate), []).append(
                stats[noise, label, epoch]["accuracy"][0]
            )
    chosen = {}
    for method in sorted(by_method, key=method_order):
        means = {rate: sum(v) / len(v) for rate, v in sorted(by_method[method].items())}
        best = max(means, key=lambda rate: (means[rate], -rate))  # ties: the smaller rate
        chosen[method] = {"learning_rate": best, "val_accuracy": means[best], "by_rate": means}
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m poft.demo.tune", description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="demo_tune", help="output folder (its own cache)")
    parser.add_argument("--mini", action="store_true", help="the seconds-long configuration (tests)")
    parser.add_argument("--methods", nargs="+", help=f"default: {' '.join(ALL_METHODS)} bi_poft_soft")
    parser.add_argument("--grid", type=float, nargs="+", default=list(TUNE_GRID), help="learning rates")
    parser.add_argument("--noise-levels", type=float, nargs="+", help="default: 0.3 (--mini: its own)")
    args = parser.parse_args(argv)
    config = DemoConfig(output=args.output, **(MINI if args.mini else {}))
    methods = tuple(args.methods) if args.methods else (*ALL_METHODS, "bi_poft_soft")
    if not args.methods and args.mini:
        methods = config.methods
    noise = tuple(args.noise_levels) if args.noise_levels else config.noise_levels if args.mini else (0.3,)
    config = dataclasses.replace(
        config, methods=methods, noise_levels=noise, eval_split="val", eval_every=config.epochs, seeds=1
    )
    results = run_demo(config, grid=tuple(args.grid))
    chosen = choose(results["runs"])
    print("| method | " + " | ".join(f"lr {r:g}" for r in args.grid) + " | chosen |")
    print("|---|" + "---|" * (len(args.grid) + 1))
    for method, c in chosen.items():
        cells = " | ".join(f"{c['by_rate'].get(r, float('nan')):.3f}" for r in args.grid)
        print(f"| {method} | {cells} | {c['learning_rate']:g} |")
    (Path(args.output) / "tune.json").write_text(json.dumps(chosen, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
