"""The whole study end to end, as a user runs it: `snakemake --cores N all` in this checkout, timed.

Where the time goes comes from the jobs' own Snakemake benchmark files (`results/benchmarks/`): jobs and
job-seconds per stage, the longest job, and the share of the job-seconds that the heavy imports every
job pays again would take (``startup_s``, measured once here, times the job count: an estimate, named
so). Appends a row naming the machine to benchmarks/results.jsonl, so that a later change to the study's
speed is a ratio against a row measured the same way.

Run it on a checkout whose `results/` holds no study (a clean clone), e.g.

    python benchmarks/study.py --cores 2                                 # the default study
    python benchmarks/study.py --cores 2 --configfile config.smoke.yaml  # the smoke preset
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from common import command_seconds, record  # benchmarks/ is on sys.path when run as a script

from resurgence.layout import BENCHMARKS, RESULTS

ROOT = Path(__file__).resolve().parents[1]
# What a job that loads models imports before its first line of work (`resurgence.stages` and the stage's libraries).
HEAVY_IMPORTS = "import torch, diffusers, transformers, peft, open_clip, torch_fidelity, resurgence.stages"


def stage_profile(bench_dir: Path) -> dict[str, dict[str, float]]:
    """Per stage (the benchmark files' first folder under ``bench_dir``): jobs, job-seconds, longest job."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "job_s": 0.0, "longest_s": 0.0})
    for tsv in sorted(bench_dir.rglob("*.tsv")):
        with open(tsv, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        seconds = float(rows[-1]["s"])
        stage = out[tsv.relative_to(bench_dir).parts[0]]
        stage["jobs"] += 1
        stage["job_s"] = round(stage["job_s"] + seconds, 2)
        stage["longest_s"] = max(stage["longest_s"], seconds)
    return dict(out)


def startup_seconds(repeats: int = 3) -> float:
    """Median wall time of a fresh interpreter importing what a model-loading job imports."""
    return round(
        statistics.median(
            command_seconds([sys.executable, "-c", HEAVY_IMPORTS], ROOT) for _ in range(repeats)
        ),
        2,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument(
        "--configfile", nargs="*", default=[], help="overlays on config.yaml, as snakemake takes them"
    )
    p.add_argument("--target", default="all")
    p.add_argument("--label", default="", help="what this run is (a change measured against a baseline)")
    args = p.parse_args(argv)
    if (ROOT / RESULTS).exists():
        raise SystemExit(f"{ROOT / RESULTS} exists: time the study on a checkout that has not run it")
    cmd = [sys.executable, "-m", "snakemake", args.target, "--cores", str(args.cores)]
    if args.configfile:
        cmd += ["--configfile", *args.configfile]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}) after {wall:.0f} s")
    stages = stage_profile(ROOT / BENCHMARKS)
    jobs = sum(s["jobs"] for s in stages.values())
    job_s = sum(s["job_s"] for s in stages.values())
    startup = startup_seconds()
    record(
        "study",
        dict(
            label=args.label,
            target=args.target,
            configfile=args.configfile,
            cores=args.cores,
            wall_s=round(wall, 1),
            heavy_jobs=jobs,
            job_s=round(job_s, 1),
            stages=stages,
            startup_s=startup,
            startup_share_estimate=round(startup * jobs / job_s, 3) if job_s else None,
        ),
    )


if __name__ == "__main__":
    main()
