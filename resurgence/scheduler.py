"""One pending re-evaluation at a time in Snakemake's job scheduler.

Snakemake 9's `JobScheduler`, with its job rate limiter on (by default: 100 jobs per second), starts a
`threading.Timer` of the limiter's span at the end of every pass of its loop, and each timer that fires
makes another pass. A job event (a job finished, resources freed) makes a pass of its own, so every event
adds a chain of timers that never ends: after N events the scheduler makes about N passes a second, each
resetting every ready job's params and resources. Late in the default study on a 2-core CPU, Snakemake ran
about 230 threads and took 27 % of one core from the jobs (docs/study_speed.md). A long span is no way out:
the timers are not daemon threads, so Snakemake's exit waits for the last of them.

`coalesce_reevaluations` keeps what the timer is for (a pass within the span, so that jobs the limiter held
back start when it allows them) and drops the repeats: a request made while one is pending is served by
that one. Its timer is a daemon thread, so it never holds up Snakemake's exit.
"""

from __future__ import annotations

import threading
from typing import Any

# The scheduler's method, as Snakemake spells it (snakemake/scheduling/job_scheduler.py).
REEVALUATION = "_schedule_reevalutation"
_PENDING = "_resurgence_pending_reevaluation"
_LOCK = threading.Lock()


def coalesce_reevaluations(scheduler_cls: type) -> bool:
    """Make ``scheduler_cls`` (Snakemake's `JobScheduler`) keep at most one re-evaluation timer pending.

    Returns False when it already does. A Snakemake without the method raises AttributeError naming it,
    so an upgrade that changes the scheduler is noticed, not silently unpatched."""
    if getattr(getattr(scheduler_cls, REEVALUATION), "coalesced", False):
        return False

    def fire(scheduler: Any) -> None:
        with _LOCK:
            setattr(scheduler, _PENDING, None)  # cleared first: the pass this starts may ask again
        scheduler._open_jobs.release()

    def schedule_reevaluation(self: Any, delay: float) -> None:
        with _LOCK:
            if getattr(self, _PENDING, None) is not None:
                return
            timer = threading.Timer(delay, fire, args=(self,))
            timer.daemon = True
            setattr(self, _PENDING, timer)
        timer.start()

    schedule_reevaluation.coalesced = True  # type: ignore[attr-defined]
    setattr(scheduler_cls, REEVALUATION, schedule_reevaluation)
    return True
