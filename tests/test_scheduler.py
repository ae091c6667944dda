"""Snakemake's scheduler with one re-evaluation timer pending at a time (`resurgence.scheduler`)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from resurgence.scheduler import REEVALUATION, coalesce_reevaluations


class FakeScheduler:
    """Snakemake's method as it is: a new non-daemon timer at every request, each releasing the loop."""

    started: list[threading.Timer]

    def __init__(self) -> None:
        self._open_jobs = threading.Semaphore(0)
        self.started = []

    def _schedule_reevalutation(self, delay: float) -> None:
        timer = threading.Timer(delay, lambda: self._open_jobs.release())
        self.started.append(timer)
        timer.start()


def passes_within(scheduler, seconds: float) -> int:
    """How many passes of the loop the timers start within ``seconds``."""
    n, end = 0, time.monotonic() + seconds
    while scheduler._open_jobs.acquire(timeout=max(end - time.monotonic(), 0.0)):
        n += 1
    return n


def test_unpatched_every_request_is_a_timer_and_a_pass():
    s = FakeScheduler()
    for _ in range(20):
        s._schedule_reevalutation(0.05)
    assert passes_within(s, 0.5) == 20


def test_patched_requests_while_one_is_pending_make_one_pass_and_the_next_request_another():
    class Scheduler(FakeScheduler):
        pass

    assert coalesce_reevaluations(Scheduler) is True
    assert coalesce_reevaluations(Scheduler) is False  # once is enough
    s, other = Scheduler(), Scheduler()
    before = threading.active_count()
    for _ in range(20):
        s._schedule_reevalutation(0.1)
    other._schedule_reevalutation(0.1)  # another scheduler's request is its own
    assert threading.active_count() - before == 2
    assert passes_within(s, 0.5) == 1 and passes_within(other, 0.1) == 1
    s._schedule_reevalutation(0.05)  # the pass that a timer started may ask again
    assert passes_within(s, 0.5) == 1
    assert FakeScheduler.__dict__[REEVALUATION] is not Scheduler.__dict__[REEVALUATION]  # the base untouched


def test_the_timer_is_a_daemon_so_snakemakes_exit_does_not_wait_for_it():
    class Scheduler(FakeScheduler):
        pass

    coalesce_reevaluations(Scheduler)
    s = Scheduler()
    s._schedule_reevalutation(3600.0)
    assert all(t.daemon for t in threading.enumerate() if isinstance(t, threading.Timer))


def test_the_installed_snakemakes_scheduler_has_the_method():
    from snakemake.scheduling.job_scheduler import JobScheduler

    class Scheduler(JobScheduler):
        pass

    assert coalesce_reevaluations(Scheduler) is True


SNAKEFILE = """
from snakemake.scheduling.job_scheduler import JobScheduler
from resurgence.scheduler import coalesce_reevaluations

coalesce_reevaluations(JobScheduler)


rule all:
    input:
        expand("out/{i}.txt", i=range(6)),


rule job:
    output:
        "out/{i}.txt",
    shell:
        "touch {output}"
"""


def test_jobs_the_rate_limiter_holds_back_still_start_and_snakemake_exits(tmp_path):
    """Two jobs a second on 6 cores: the last four jobs start only through re-evaluation timers."""
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "6", "--max-jobs-per-timespan", "2/1s", "all"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i}.txt" for i in range(6)]
    assert time.monotonic() - t0 < 60


def test_a_jobs_priority_orders_by_stage_first_then_by_work():
    from resurgence.scheduler import STAGE_PRIORITY, STAGE_STEP, job_priority

    # the largest erasure still ranks below the smallest job of no earlier stage, above any later one
    assert job_priority("erase", 10**6) < (STAGE_PRIORITY["erase"] + 1) * STAGE_STEP
    assert job_priority("erase", 0) > job_priority("ftdata_random", 10**6)
    assert job_priority("erase", 100) > job_priority("erase", 10) > job_priority("erase", 1)
    assert job_priority("figure") == 0  # a rule of no stage
    with pytest.raises(ValueError, match="work must be >= 0"):
        job_priority("erase", -1)
