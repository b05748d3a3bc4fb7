"""Independent training runs on W worker processes (1 torch thread each), one progress bar in the parent.

Why processes and not threads: these models are so small (~0.5M parameters, ~22-token rows) that torch's
intra-op threads buy little, and on a shared 2-core machine two threads per process were measured 7x
SLOWER than one (spin-waiting under oversubscription). Two single-threaded workers use both cores fully.
Workers report optimizer steps through a queue; results come back in job order. workers=1 runs in-process.
Jobs are started longest first (`cost`), so the last job to start is a short one and no core idles at the end;
a finished job can release jobs that depend on it (`follow_up`: the aligned model trained from the base waits
for the base, while the other one trains beside the base's pretraining). One `Workers` pool serves the whole
demo (models, then target runs): each worker imports torch / transformers / TRL once (~5 s), not once per phase.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Workers:
    """A process pool and the queue its workers report steps through; `None` stands for in-process (workers=1)."""

    pool: futures.ProcessPoolExecutor
    queue: Any
    size: int


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Workers | None]:
    """`workers` spawned single-thread processes for the whole `with` block (None if workers <= 1)."""
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        with futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            yield Workers(pool, manager.Queue(), workers)


def run_jobs(
    fn: Callable[[Any, Any], Any],
    jobs: Sequence[Any],
    workers: Workers | int | None,
    progress: Progress,
    on_done: Callable[[Any], None] | None = None,
    cost: Callable[[Any], float] | None = None,
    follow_up: Callable[[Any, Any], Sequence[Any]] | None = None,
) -> list[Any]:
    """`fn(job, sink)` for every job; returns the results in job order, calling `on_done` as each finishes.

    `cost(job)`: jobs start in decreasing cost (ties: job order). `follow_up(job, result)`: jobs that can start
    only once `job` is done; they are run too and their results appended after `jobs`' (in release order).
    Every job is a pure function of its arguments (seeded, one thread), so the order changes no result."""
    queue_: list[tuple[int, Any]] = list(enumerate(jobs))
    results: dict[int, Any] = {}
    released_so_far = [len(jobs)]

    def ready(released: Sequence[Any]) -> None:
        for job in released:
            queue_.append((released_so_far[0], job))
            released_so_far[0] += 1
        if cost is not None:
            queue_.sort(key=lambda item: (-cost(item[1]), item[0]))

    def finish(index: int, job: Any, result: Any) -> None:
        results[index] = result
        if on_done is not None:
            on_done(result)
        if follow_up is not None:
            ready(follow_up(job, result))

    ready([])
    if isinstance(workers, int) and (workers <= 1 or (len(jobs) <= 1 and follow_up is None)):
        workers = None
    if isinstance(workers, int):  # a pool of its own for these jobs
        with worker_pool(workers) as pool:
            return run_jobs(fn, jobs, pool, progress, on_done, cost, follow_up)
    if workers is None:
        while queue_:
            index, job = queue_.pop(0)
            finish(index, job, fn(job, progress.bar))
        return [results[i] for i in sorted(results)]
    sink = QueueSink(workers.queue)
    pending: dict[futures.Future, tuple[int, Any]] = {}
    while queue_ or pending:
        while queue_ and len(pending) < workers.size:
            index, job = queue_.pop(0)
            pending[workers.pool.submit(fn, job, sink)] = (index, job)
        done, _ = futures.wait(pending, timeout=0.25, return_when=futures.FIRST_COMPLETED)
        _drain(workers.queue, progress)
        for future in done:
            index, job = pending.pop(future)
            finish(index, job, future.result())
    _drain(workers.queue, progress)
    return [results[i] for i in sorted(results)]


def _drain(queue, progress: Progress) -> None:
    steps = 0
    while not queue.empty():
        steps += queue.get()
    if steps:
        progress.bar.update(steps)
