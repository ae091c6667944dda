"""Snakemake's own CPU beside a local run's jobs, its scheduler as it is and with one re-evaluation timer
pending at a time (`resurgence.scheduler`, which the Snakefile applies).

Snakemake 9's scheduler, with its job rate limiter on (by default), starts a timer at every pass of its
loop, and each timer that fires makes another pass: every job event adds a chain of passes that never
ends, so the scheduler loops more often with every job finished. This runs a synthetic workflow of
``--jobs`` jobs that each only sleep, in a temporary folder, once per arm, one after the other, with
Snakemake's default rate limit, and writes a row per arm: wall seconds, Snakemake's own CPU seconds and its
most threads (`study.run_study`).

    python benchmarks/scheduler.py --jobs 200 --sleep 1 --cores 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import record  # benchmarks/ is on sys.path when run as a script
from study import run_study

PATCH = """
from snakemake.scheduling.job_scheduler import JobScheduler
from resurgence.scheduler import coalesce_reevaluations

coalesce_reevaluations(JobScheduler)
"""
SNAKEFILE = """
rule all:
    input:
        expand("out/{{i}}.txt", i=range({jobs})),


rule job:
    output:
        "out/{{i}}.txt",
    shell:
        "sleep {sleep} && touch {{output}}"
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--sleep", type=float, default=1.0, help="seconds each job sleeps")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    arms = {"snakemake_as_is": "", "one_pending_reevaluation": PATCH}
    for arm, patch in arms.items():
        with tempfile.TemporaryDirectory(prefix="scheduler-bench-") as tmp:
            (Path(tmp) / "Snakefile").write_text(patch + SNAKEFILE.format(jobs=args.jobs, sleep=args.sleep))
            cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--quiet", "all"]
            run = run_study(Path(tmp), cmd, poll_s=0.5)
        record(
            "snakemake_scheduler",
            dict(
                label=args.label,
                arm=arm,
                jobs=args.jobs,
                job_sleep_s=args.sleep,
                cores=args.cores,
                wall_s=run.wall_s,
                snakemake_cpu_s=run.snakemake_cpu_s,
                snakemake_threads_max=run.snakemake_threads_max,
            ),
        )


if __name__ == "__main__":
    main()
