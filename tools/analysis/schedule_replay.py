"""How long would a measured study have taken had its jobs started in another order? A replay, not a run.

Reads a finished study's Snakemake metadata (`.snakemake/metadata`: each output's rule, job hash, input files,
start and end time), rebuilds its jobs, their dependencies (an input another job wrote) and their measured
durations, and list-schedules them on ``--slots`` GPU slots: whenever a slot is free, the first ready job in
the policy's order starts; jobs of rules without a ``gpu`` resource (tables, figures, copies from the base
pool) take no slot. ``--mem-mb`` and ``--cores`` add the run's other limits: each job holds its rule's declared
``mem_mb`` (the profile's default where it declares none) and one core (the runs timed here gave every job one
thread or two: pass the cores over the threads). Policies:
  snakemake   the order in which the run's jobs did start (a check of the replay against the run);
  stages      the rules' ``priority:`` as the Snakefile states it (`resurgence.scheduler.job_priority`: the
              stage, then within it an erasure's concept count, `study.erase_work`, from --config), then
              the run's order;
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
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from resurgence import layout  # noqa: E402  (the checkout's package, as a script)
from resurgence.config import load_config  # noqa: E402
from resurgence.scheduler import job_priority  # noqa: E402
from resurgence.study import erase_work  # noqa: E402

_RULE = re.compile(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", re.M | re.S)
_MEM = re.compile(r"mem_mb=(\d+)")
DEFAULT_MEM_MB = 4000  # workflow/profiles/default's default-resources


@dataclass
class Job:
    rule: str
    start: float
    end: float
    inputs: set[str]
    deps: set[int] = field(default_factory=set)
    outputs: set[str] = field(default_factory=set)

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _rule_blocks(rules_dir: Path) -> dict[str, str]:
    return {
        m.group(1): m.group(2) for f in sorted(rules_dir.glob("*.smk")) for m in _RULE.finditer(f.read_text())
    }


def gpu_rules(rules_dir: Path = ROOT / "workflow" / "rules") -> set[str]:
    """Rules whose jobs hold a ``gpu`` slot."""
    return {rule for rule, block in _rule_blocks(rules_dir).items() if "gpu=" in block}


def declared_mem_mb(rules_dir: Path = ROOT / "workflow" / "rules") -> dict[str, int]:
    """Each rule's declared ``mem_mb``."""
    return {
        rule: int(m.group(1)) for rule, block in _rule_blocks(rules_dir).items() if (m := _MEM.search(block))
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
        output = base64.b64decode(f.name).decode()
        writer[output] = key
        by_key[key].outputs.add(output)
    keys = list(by_key)
    index = {k: i for i, k in enumerate(keys)}
    jobs = [by_key[k] for k in keys]
    for i, job in enumerate(jobs):
        job.deps = {index[writer[p]] for p in job.inputs if p in writer and index[writer[p]] != i}
    return jobs


# An erasure's outputs lie in layout.erase_dir(task, erase): the first "@" is the task.
_ERASE_TASK = re.compile(
    re.escape(layout.erase_dir("@", "@")).replace("@", "([^/]+)", 1).replace("@", "[^/]+")
)


def priority(job: Job, config: dict[str, Any]) -> int:
    """The job's Snakemake priority as the Snakefile states it (`scheduler.job_priority`), from its outputs."""
    work = 0
    if job.rule == "erase":
        tasks = {m.group(1) for out in job.outputs if (m := _ERASE_TASK.match(out))}
        work = max((erase_work(config, t) for t in tasks), default=0)
    return job_priority(job.rule, work)


def replay(
    jobs: list[Job],
    slots: int,
    order: Callable[[int], tuple],
    slotted: set[str],
    mem_mb: int | None = None,
    cores: int | None = None,
    mem_of: dict[str, int] | None = None,
) -> float:
    """The end of a list schedule of ``jobs`` on ``slots`` slots (and ``mem_mb``, ``cores`` where given), ready
    jobs started in ``order``."""
    mem_of = mem_of or {}
    need = [
        (int(j.rule in slotted), mem_of.get(j.rule, DEFAULT_MEM_MB) if mem_mb else 0, 1 if cores else 0)
        for j in jobs
    ]
    free = [slots, mem_mb or 0, cores or 0]
    waiting, running, done = set(range(len(jobs))), [], {}
    now = 0.0
    while waiting or running:
        for i in sorted((i for i in waiting if jobs[i].deps <= done.keys()), key=order):
            if any(n > f for n, f in zip(need[i], free, strict=True)):
                continue
            free = [f - n for f, n in zip(free, need[i], strict=True)]
            waiting.discard(i)
            heapq.heappush(running, (now + jobs[i].seconds, i))
        if not running:
            raise ValueError("a job can never start: it waits for itself, or needs more than the limits hold")
        now, i = heapq.heappop(running)
        done[i] = now
        free = [f + n for f, n in zip(free, need[i], strict=True)]
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
    p.add_argument("--mem-mb", type=int, help="the run's --resources mem_mb (default: no limit)")
    p.add_argument("--cores", type=int, help="the run's --cores, one a job (default: no limit)")
    p.add_argument(
        "--config", type=Path, default=ROOT / "config.yaml", help="the run's config (erasures' size)"
    )
    args = p.parse_args(argv)
    jobs = read_jobs(args.run_dir)
    slotted = gpu_rules()
    t0 = min(j.start for j in jobs)
    chain = remaining_chain(jobs)
    config = load_config([args.config])
    rank = [priority(j, config) for j in jobs]
    policies: dict[str, Callable[[int], tuple]] = {
        "snakemake": lambda i: (jobs[i].start,),
        "stages": lambda i: (-rank[i], jobs[i].start),
        "critical": lambda i: (-chain[i],),
    }
    print(
        f"{len(jobs)} jobs; first start to last end {max(j.end for j in jobs) - t0:.1f} s; longest chain "
        f"{max(chain):.1f} s; slot job-seconds {sum(j.seconds for j in jobs if j.rule in slotted):.1f}"
    )
    for slots in args.slots:
        ends = {
            name: replay(jobs, slots, order, slotted, args.mem_mb, args.cores, declared_mem_mb())
            for name, order in policies.items()
        }
        print(f"slots {slots}: " + ", ".join(f"{name} {end:.1f} s" for name, end in ends.items()))


if __name__ == "__main__":
    main()
