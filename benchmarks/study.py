"""The whole study end to end, as a user runs it: `snakemake --cores N all` in this checkout, timed.

Where the time goes comes from the jobs' own Snakemake benchmark files (`results/benchmarks/`): jobs and
job-seconds per stage, the longest job, and the share of the job-seconds that the heavy imports every
job pays again would take (``startup_s``, measured once here, times the job count: an estimate, named
so); and, from the jobs' logs, each stage's time split into start-up, loading, sampling, training, scoring
and writing (``phases``: the line every job prints at its end, `resurgence.phases`). Appends a row naming
the machine to benchmarks/results.jsonl, so that a later change to the study's speed is a ratio against a
row measured the same way.

Run it on a checkout whose `results/` holds no study (a clean clone), e.g.

    python benchmarks/study.py --cores 2                                 # the default study
    python benchmarks/study.py --cores 2 --configfile config.smoke.yaml  # the smoke preset
    python benchmarks/study.py --cores 16 -- --resources gpu=8             # further Snakemake arguments

``--compare-fork-server`` runs the study twice, one after the other, each in a fresh copy of this
checkout: every job in a fresh interpreter (``fork_server: false``, the baseline) and every job forked
from the warm interpreter (`resurgence.forkserver`). One row gives both wall times, their ratio, and
whether every metric and table file came out byte-identical.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import psutil
from common import command_seconds, record  # benchmarks/ is on sys.path when run as a script

from resurgence.jobs import LOCK_FILE
from resurgence.layout import BENCHMARKS, LOGS, METRICS, RESULTS, TABLES
from resurgence.phases import parse_phases

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


def phase_profile(logs_dir: Path) -> dict[str, dict[str, float]]:
    """Per stage (the logs' first folder under ``logs_dir``): how many jobs reported where their time went
    (`resurgence.phases`, the last line of a job's log) and each phase's seconds summed over them."""
    out: dict[str, dict[str, float]] = {}
    for log_file in sorted(logs_dir.rglob("*.log")):
        split = parse_phases(log_file.read_text(errors="replace").splitlines())
        if split is None:
            continue
        stage = out.setdefault(log_file.relative_to(logs_dir).parts[0], {"jobs": 0})
        stage["jobs"] += 1
        for name, seconds in split.items():
            stage[name] = round(stage.get(name, 0.0) + seconds, 2)
    return out


def startup_seconds(repeats: int = 3) -> float:
    """Median wall time of a fresh interpreter importing what a model-loading job imports."""
    return round(
        statistics.median(
            command_seconds([sys.executable, "-c", HEAVY_IMPORTS], ROOT) for _ in range(repeats)
        ),
        2,
    )


def copy_checkout(dest: Path) -> Path:
    """This checkout's tracked and not-ignored files (no results, no virtual environment) in ``dest``."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    dest.mkdir(parents=True)
    packed = subprocess.run(
        ["tar", "cf", "-", "--null", "-T", "-"], cwd=ROOT, input=files, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "xf", "-"], cwd=dest, input=packed, check=True)
    return dest


def own_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system, every thread) that a running process has spent itself, its children not
    counted; None once it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def thread_count(pid: int) -> int | None:
    """The threads a running process has now; None once it is gone."""
    try:
        return psutil.Process(pid).num_threads()
    except psutil.Error:
        return None


@dataclass
class StudyRun:
    wall_s: float
    snakemake_cpu_s: float | None  # Snakemake's own process (its scheduler), read up to a poll late
    snakemake_threads_max: int | None


def run_study(root: Path, cmd: list[str], poll_s: float = 2.0) -> StudyRun:
    """Run the study command in ``root``: its wall seconds, and what Snakemake's own process spent beside
    the jobs (read every ``poll_s`` while it runs). A failed run stops the benchmark."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root)
    cpu, threads = None, None
    while proc.poll() is None:
        cpu = own_cpu_seconds(proc.pid) or cpu
        now = thread_count(proc.pid)
        if now is not None:
            threads = max(threads or 0, now)
        time.sleep(poll_s)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {root} ({proc.returncode}) after {wall:.0f} s")
    return StudyRun(round(wall, 1), None if cpu is None else round(cpu, 1), threads)


def result_digests(root: Path) -> dict[str, str]:
    """sha256 of every metric and table file of a study, by path."""
    out = {}
    for folder in (METRICS, TABLES):
        for f in sorted((root / folder).rglob("*")):
            if f.is_file() and f.name != LOCK_FILE:  # a writer's lock holds its PID
                out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def compare_fork_server(cmd: list[str], args: argparse.Namespace) -> None:
    arms = {"fresh_interpreters": "fork_server=false", "fork_server": "fork_server=true"}
    walls, scheduler_cpu, stages, job_phases, digests = {}, {}, {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="study-bench-") as tmp:
        for arm, setting in arms.items():
            root = copy_checkout(Path(tmp) / arm)
            run = run_study(root, [*cmd, "--config", setting])
            walls[arm], scheduler_cpu[arm] = run.wall_s, run.snakemake_cpu_s
            stages[arm] = stage_profile(root / BENCHMARKS)
            job_phases[arm] = phase_profile(root / LOGS)
            digests[arm] = result_digests(root)
    a, b = digests["fresh_interpreters"], digests["fork_server"]
    record(
        "study_fork_server",
        dict(
            label=args.label,
            target=args.target,
            configfile=args.configfile,
            cores=args.cores,
            snakemake_args=args.snakemake_args,
            wall_s=walls,
            snakemake_cpu_s=scheduler_cpu,
            ratio=round(walls["fresh_interpreters"] / walls["fork_server"], 3),
            stages=stages,
            phases=job_phases,
            result_files=len(a),
            identical_files=sum(1 for k in a if b.get(k) == a[k]),
            differing_files=sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)),
        ),
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument(
        "--configfile", nargs="*", default=[], help="overlays on config.yaml, as snakemake takes them"
    )
    p.add_argument("--target", default="all")
    p.add_argument("--label", default="", help="what this run is (a change measured against a baseline)")
    p.add_argument(
        "--compare-fork-server",
        action="store_true",
        help="time the study with fresh interpreters and with the fork server, each in a fresh copy",
    )
    p.add_argument(
        "snakemake_args", nargs="*", help="after --: further Snakemake arguments (recorded in the row)"
    )
    args = p.parse_args(argv)
    cmd = [sys.executable, "-m", "snakemake", args.target, "--cores", str(args.cores), *args.snakemake_args]
    if args.configfile:
        cmd += ["--configfile", *args.configfile]
    if args.compare_fork_server:
        compare_fork_server(cmd, args)
        return
    if (ROOT / RESULTS).exists():
        raise SystemExit(f"{ROOT / RESULTS} exists: time the study on a checkout that has not run it")
    run = run_study(ROOT, cmd)
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
            snakemake_args=args.snakemake_args,
            wall_s=run.wall_s,
            snakemake_cpu_s=run.snakemake_cpu_s,
            snakemake_threads_max=run.snakemake_threads_max,
            heavy_jobs=jobs,
            job_s=round(job_s, 1),
            stages=stages,
            phases=phase_profile(ROOT / LOGS),
            startup_s=startup,
            startup_share_estimate=round(startup * jobs / job_s, 3) if job_s else None,
        ),
    )


if __name__ == "__main__":
    main()
