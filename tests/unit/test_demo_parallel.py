"""experiments.demo.parallel.run_jobs: longest job first, follow-up jobs released by a finished one, results in job
order; a pool of spawned workers started from pytest imports `experiments` (pyproject's pythonpath)."""

import pytest

from experiments.demo.console import Progress
from experiments.demo.parallel import run_jobs


def times_ten(job: int, sink) -> int:
    sink.update(1)
    return job * 10


def test_jobs_start_longest_first_follow_ups_run_after_their_parent_and_results_keep_job_order():
    started = []

    def fn(job, sink):
        started.append(job)
        return job * 10

    follow_up = lambda job, result: [job + 100] if job == 2 else []  # noqa: E731
    results = run_jobs(fn, [1, 3, 2], 1, Progress(0, disable=True), cost=lambda job: job, follow_up=follow_up)
    assert started == [3, 2, 102, 1]  # 102 (cost 102) jumps the queue once 2 has released it
    assert results == [10, 30, 20, 1020]  # jobs' order, then follow-ups in release order
    assert run_jobs(fn, [1, 3, 2], 1, Progress(0, disable=True)) == [10, 30, 20]


@pytest.mark.slow
def test_spawned_workers_import_experiments_and_report_their_steps():
    """Each spawned worker unpickles `experiments.demo.parallel._init_worker` (and this module's `times_ten`):
    it must find `experiments` on the sys.path it inherits from the parent."""
    progress = Progress(3)  # enabled: a disabled bar counts nothing
    assert run_jobs(times_ten, [1, 2, 3], 2, progress) == [10, 20, 30]
    assert progress.bar.n == 3  # one step per job, sent through the queue
