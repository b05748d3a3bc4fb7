"""Learning-rate choice for the demo: every method at every rate of a small grid, judged on VALIDATION prompts.

PoFT's gradient is the cross-entropy times tau (~0.2-0.8), SFT's is not, DFT's is scaled by token probabilities
and top-40 % filtering trains on fewer rows: one shared learning rate would favour some of them. So each method
gets the rate of `TUNE_GRID` with the best validation accuracy after the last epoch, averaged over the noise
levels (by default the middle one, 0.3: the grid at every level did not fit this machine's time; one rate per
method, not per noise level: a user does not know the noise level of their data). Seed 0, the default run's data,
models and epochs, evaluated after the last epoch only; the test prompts are never evaluated here. The chosen rates are
copied into demo/config.py's LEARNING_RATES by hand (with this table in RESULTS.md), so `make demo` does not re-tune.

    python -m experiments.tune --output demo_tune          # ~3x the default run's target training
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .demo.config import ALL_METHODS, MINI, TUNE_GRID, DemoConfig
from .demo.report import aggregate, method_order
from .demo.run import run_demo
from .entry import run_main

PROG = "python -m experiments.tune"


@dataclass
class TuneArguments:
    """`python -m experiments.tune`'s options: the demo's configuration, every method at every rate of `grid`."""

    output: str = field(default="demo_tune", metadata={"help": "Output folder (its own cache)."})
    mini: bool = field(default=False, metadata={"help": "The seconds-long configuration (tests)."})
    methods: list[str] | None = field(
        default=None, metadata={"help": f"Methods to tune (default: {' '.join(ALL_METHODS)} bi_poft_soft)."}
    )
    grid: list[float] = field(default_factory=lambda: list(TUNE_GRID), metadata={"help": "Learning rates."})
    noise_levels: list[float] | None = field(
        default=None, metadata={"help": "Shares of noisy rows (default: 0.3; --mini: its own)."}
    )


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
    return run_main(PROG, TuneArguments, tune, argv, interrupted, description=__doc__.split("\n")[0])


def interrupted(args: TuneArguments) -> str:
    return f"interrupted; the models and finished runs cached in {args.output}/assets are kept: the same command reuses them"


def tune(args: TuneArguments) -> dict[str, dict]:
    """Run the grid, print the validation accuracy per method and rate, write OUTPUT/tune.json."""
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
    return chosen


if __name__ == "__main__":
    sys.exit(main())
