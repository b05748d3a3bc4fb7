"""Independent training runs on W worker processes (1 torch thread each), one progress bar in the parent.

Why processes and not threads: these models are so small (~0.5M parameters, ~22-token rows) that torch's
intra-op threads buy little, and on a shared 2-core machine two threads per process were measured 7x
SLOWER than one (spin-waiting under oversubscription). Two single-threaded workers use both cores fully.
Workers report optimizer steps through a queue; results come back in job order. workers=1 runs in-process.
"""

from __future__ import annotations

import concurrent.futures as futures
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any

from .console import Progress, quiet_libraries


class QueueSink:
    """Stands in for the progress bar inside a worker: `update(n)` sends n finished steps to the parent."""

    def __init__(self, queue):
        self.queue = queue

    def update(self, n: int = 1) -> None:
        self.queue.put(n)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    quiet_libraries()


def run_jobs(
    fn: Callable[[Any, Any], Any],
    jobs: Sequence[Any],
    workers: int,
    progress: Progress,
    on_done: Callable[[Any], None] | None = None,
) -> list[Any]:
    """`fn(job, sink)` for every job; returns the results in job order, calling `on_done` as each finishes."""
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            results.append(fn(job, progress.bar))
            if on_done is not None:
                on_done(results[-1])
        return results
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        queue = manager.Queue()
        sink = QueueSink(queue)
        with futures.ProcessPoolExecutor(
            min(workers, len(jobs)), mp_context=context, initializer=_init_worker
        ) as pool:
            pending = {pool.submit(fn, job, sink): i for i, job in enumerate(jobs)}
            results: list[Any] = [None] * len(jobs)
            while pending:
                done, _ = futures.wait(pending, timeout=0.25, return_when=futures.FIRST_COMPLETED)
                _drain(queue, progress)
                for future in done:
                    results[pending.pop(future)] = result = future.result()
                    if on_done is not None:
                        on_done(result)
            _drain(queue, progress)
    return results


def _drain(queue, progress: Progress) -> None:
    steps = 0
    while not queue.empty():
        steps += queue.get()
    if steps:
        progress.bar.update(steps)
