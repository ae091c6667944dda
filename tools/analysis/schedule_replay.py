"""How long would a measured study have taken had its jobs started in another order? A replay, not a run.

Reads a finished study's Snakemake metadata (`.snakemake/metadata`: each output's rule, job hash, input files,
start and end time), rebuilds its jobs, their dependencies (an input another job wrote) and their measured
durations, and list-schedules them on ``--slots`` GPU slots: whenever a slot is free, the first ready job in
the policy's order starts; jobs of rules without a ``gpu`` resource (tables, figures, copies from the base
pool) take no slot. Policies:
  snakemake   the order in which the run's jobs did start (a check of the replay against the run);
  stages      `resurgence.scheduler.STAGE_PRIORITY`, then the run's order (the rules' ``priority:``);
  critical    the longest chain of measured durations still ahead of a job first (a lower bound for
              list scheduling's best; it needs every duration in advance, which Snakemake has not).
Durations are those measured under the run's own concurrency; another order shares the GPU differently, so
a replayed end is a projection.

    python tools/analysis/schedule_replay.py RUN_DIR --slots 16
"""

from __future__ import annotations

import argparse
import base64
import heapq
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from resurgence.scheduler import STAGE_PRIORITY  # noqa: E402  (the checkout's package, as a script)

_RULE = re.compile(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", re.M | re.S)


@dataclass
class Job:
    rule: str
    start: float
    end: float
    inputs: set[str]
    deps: set[int] = field(default_factory=set)

    @property
    def seconds(self) -> float:
        return self.end - self.start


def gpu_rules(rules_dir: Path = ROOT / "workflow" / "rules") -> set[str]:
    """Rules whose jobs hold a ``gpu`` slot."""
    return {
        m.group(1)
        for f in rules_dir.glob("*.smk")
        for m in _RULE.finditer(f.read_text())
        if "gpu=" in m.group(2)
    }


def read_jobs(run_dir: Path) -> list[Job]:
    """The run's jobs (one per rule and job hash) with the jobs each waited for."""
    by_key: dict[tuple[str, str], Job] = {}
    writer: dict[str, tuple[str, str]] = {}
    for f in sorted((run_dir / ".snakemake" / "metadata").iterdir()):
        meta = json.loads(f.read_text())
        if meta.get("starttime") is None or meta.get("endtime") is None:
            continue
        key = (meta["rule"], meta["job_hash"])
        by_key.setdefault(key, Job(meta["rule"], meta["starttime"], meta["endtime"], set(meta["input"])))
        writer[base64.b64decode(f.name).decode()] = key
    keys = list(by_key)
    index = {k: i for i, k in enumerate(keys)}
    jobs = [by_key[k] for k in keys]
    for i, job in enumerate(jobs):
        job.deps = {index[writer[p]] for p in job.inputs if p in writer and index[writer[p]] != i}
    return jobs


def replay(jobs: list[Job], slots: int, order: Callable[[int], tuple], slotted: set[str]) -> float:
    """The end of a list schedule of ``jobs`` on ``slots`` slots, ready jobs started in ``order``."""
    waiting, running, done = set(range(len(jobs))), [], {}
    free, now = slots, 0.0
    while waiting or running:
        for i in sorted((i for i in waiting if jobs[i].deps <= done.keys()), key=order):
            takes = jobs[i].rule in slotted
            if takes and free == 0:
                continue
            free -= takes
            waiting.discard(i)
            heapq.heappush(running, (now + jobs[i].seconds, i))
        if not running:
            raise ValueError("jobs wait for each other: the metadata is not of one finished run")
        now, i = heapq.heappop(running)
        done[i] = now
        free += jobs[i].rule in slotted
    return now


def remaining_chain(jobs: list[Job]) -> list[float]:
    """Each job's own duration plus the longest chain of durations of the jobs that wait for it."""
    after: list[list[int]] = [[] for _ in jobs]
    for i, job in enumerate(jobs):
        for d in job.deps:
            after[d].append(i)
    chain: dict[int, float] = {}

    def walk(i: int) -> float:
        if i not in chain:
            chain[i] = jobs[i].seconds + max((walk(j) for j in after[i]), default=0.0)
        return chain[i]

    return [walk(i) for i in range(len(jobs))]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished study's directory (holding .snakemake/metadata)")
    p.add_argument("--slots", type=int, nargs="+", default=[16], help="GPU slots (the run's --resources gpu)")
    args = p.parse_args(argv)
    jobs = read_jobs(args.run_dir)
    slotted = gpu_rules()
    t0 = min(j.start for j in jobs)
    chain = remaining_chain(jobs)
    policies: dict[str, Callable[[int], tuple]] = {
        "snakemake": lambda i: (jobs[i].start,),
        "stages": lambda i: (-STAGE_PRIORITY.get(jobs[i].rule, 0), jobs[i].start),
        "critical": lambda i: (-chain[i],),
    }
    print(
        f"{len(jobs)} jobs; first start to last end {max(j.end for j in jobs) - t0:.1f} s; longest chain "
        f"{max(chain):.1f} s; slot job-seconds {sum(j.seconds for j in jobs if j.rule in slotted):.1f}"
    )
    for slots in args.slots:
        ends = {name: replay(jobs, slots, order, slotted) for name, order in policies.items()}
        print(f"slots {slots}: " + ", ".join(f"{name} {end:.1f} s" for name, end in ends.items()))


if __name__ == "__main__":
    main()
