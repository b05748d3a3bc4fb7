"""Where the demo's time goes: CPU seconds (user + sys of this process) per phase, all in ONE process.

    python -m experiments.profile_demo --output /tmp/demo_profile          # the default run, nothing cached

The demo runs with workers=1 (everything in this process, one torch thread, as each worker of the real run),
so every phase's CPU time is measured by `time.process_time` around the demo's own functions: pretraining the
base, training the aligned models, scoring, each target run's training (without its evaluations), the held-out
evaluations (generation + clean NLL) and PoFT's weight measurements. Exclusive times: a nested phase is taken
out of its parent. CPU time is the measure because the machine is shared (wall time depends on the load);
the quiet 2-core wall time is estimated from it as the critical path (RESULTS.md, "Commands, seeds and wall
times"). The tables it prints equal `python -m experiments.demo`'s: every run is a pure function of its settings.
`uptime` is printed at the start and the end; the last line printed is one JSON object.
"""

from __future__ import annotations

import collections
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

from .demo import assets, evaluate, run
from .demo.config import DemoConfig
from .entry import run_main

PROG = "python -m experiments.profile_demo"

CPU: dict[str, float] = collections.defaultdict(float)
CALLS: collections.Counter = collections.Counter()
PER_RUN: dict[str, float] = {}
_STACK: list[str] = []


def timed(fn: Callable, label: str) -> Callable:
    """`fn`, its CPU time added to CPU[label] and taken out of the enclosing timed call's."""

    def inner(*args, **kwargs):
        started = time.process_time()
        _STACK.append(label)
        try:
            return fn(*args, **kwargs)
        finally:
            _STACK.pop()
            spent = time.process_time() - started
            CPU[label] += spent
            CALLS[label] += 1
            if _STACK:
                CPU[_STACK[-1]] -= spent

    return inner


def patch(module: ModuleType, name: str, label: str) -> None:
    setattr(module, name, timed(getattr(module, name), label))


@dataclass
class ProfileArguments:
    output: str = field(metadata={"help": "A fresh folder (nothing cached)."})


def main(argv: list[str] | None = None) -> int:
    return run_main(PROG, ProfileArguments, profile, argv, lambda args: "interrupted; nothing measured is kept",
                    description=__doc__.split("\n")[0])  # fmt: skip


def profile(args: ProfileArguments) -> None:
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    patch(assets, "pretrain_base", "pretraining the base")
    patch(assets, "_train_aligned", "aligned models")
    patch(run, "score_rows", "scoring")
    patch(run, "_weights", "PoFT weight measurement")
    measured = timed(evaluate.evaluate, "evaluation (test / validation prompts)")
    run.evaluate = assets.evaluate = measured
    target = timed(run.train_target, "target runs' training")

    def per_run(job, sink):
        started = time.process_time()
        result = target(job, sink)
        PER_RUN[f"{job.run.label} noise={job.run.noise}"] = round(time.process_time() - started, 2)
        return result

    run.train_target = per_run
    started, wall = time.process_time(), time.time()
    run.run_demo(DemoConfig(output=args.output, workers=1))
    total = time.process_time() - started
    CPU["rest (data, report, plots)"] = total - sum(CPU.values())
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    for label, seconds in sorted(CPU.items(), key=lambda kv: -kv[1]):
        print(f"{label:42s} {seconds:7.1f} s CPU  ({CALLS.get(label, 0)} calls)")
    print(f"{'total (after imports)':42s} {total:7.1f} s CPU, wall {time.time() - wall:.0f} s")
    out = {"total_cpu_s": round(total, 1), "cpu_s": {k: round(v, 1) for k, v in CPU.items()}, "calls": CALLS}
    print(json.dumps(out | {"per_run_cpu_s": PER_RUN}))


if __name__ == "__main__":
    raise SystemExit(main())
