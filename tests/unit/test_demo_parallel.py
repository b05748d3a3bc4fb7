"""demo.parallel.run_jobs: longest job first, follow-up jobs released by a finished one, results in job order."""

from poft.demo.console import Progress
from poft.demo.parallel import run_jobs


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
