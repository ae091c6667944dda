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

`STAGE_PRIORITY` is the order in which ready jobs start when slots are scarce, and `job_priority` a job's
``priority:`` from it: its stage first, then, within a stage, the larger job first.
"""

from __future__ import annotations

import threading
from typing import Any

# The scheduler's method, as Snakemake spells it (snakemake/scheduling/job_scheduler.py).
REEVALUATION = "_schedule_reevalutation"
_PENDING = "_resurgence_pending_reevaluation"
_LOCK = threading.Lock()

# Ready jobs start by stage, the heads of the DAG's longest chains first: erasures (identity_100's MACE and
# ESD's run 25-90 s on a shared GPU, and each heads erase -> erased generations -> fine-tune -> fine-tuned
# generations -> evaluation), then the fine-tune sets and base pools, the erased generations and fine-tunes,
# the fine-tuned generations; evaluation and everything else (priority 0) last. Snakemake's greedy order
# otherwise started identity_100's erasure 165 s into a 352 s study on an H100. Replayed from that run's job
# times on 16 slots with memory not binding (`tools/analysis/schedule_replay.py`, which reproduces the run
# within 1 s), this order ends it in 205 s against 250 s for the order Snakemake chose. It changes when jobs
# start, never what they compute. Keyed by rule; others run at 0.
STAGE_PRIORITY: dict[str, int] = {
    "erase": 4,
    "toyworld_quality": 4,
    "toyworld_variant": 4,
    "ftdata_random": 3,
    "ftdata_tercile": 3,
    "generate_base_pool": 3,
    "generate_erased": 2,
    "finetune": 2,
    "generate_finetuned": 1,
}

# A stage's jobs take priorities STAGE_STEP * stage + work, work in [0, STAGE_STEP): no job of a later stage
# outranks one of an earlier stage.
STAGE_STEP = 1000


def job_priority(rule: str, work: int = 0) -> int:
    """A job's Snakemake priority: its rule's stage (`STAGE_PRIORITY`), then ``work``, the job's size in its
    rule's own unit, larger first (longest processing time first). An erasure's work is its concept count:
    identity_100's MACE erasure draws and trains for 100 concepts, ran 189 s against at most 40 s for any
    other erasure on an H100, and heads the study's longest chain; in Snakemake's order among the 35
    erasures it started 27.6 s in (docs/study_speed.md)."""
    if work < 0:
        raise ValueError(f"work must be >= 0, got {work}")
    return STAGE_PRIORITY.get(rule, 0) * STAGE_STEP + min(work, STAGE_STEP - 1)


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
