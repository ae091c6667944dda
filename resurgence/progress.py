"""Progress: bars that also show in Snakemake logs, and a line on the whole study while it runs.

tqdm hides itself when stderr is not a terminal; a job's log is a file, and a researcher
tailing it wants to see a long stage move. Off a terminal we keep the bar on, refreshed at
most every 30 s and in ASCII, so a log gains a line fragment per half minute, not per step.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

LOG_REFRESH_S = 30.0


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """`tqdm` that stays on in log files (rarely refreshed there) and is off when ``enabled`` is False."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", LOG_REFRESH_S)
        kwargs.setdefault("ascii", True)
    return tqdm(iterable, disable=not enabled, **kwargs)


# ----------------------------------------------------------------------------- the whole study

STUDY_REFRESH_S = 60.0


def remaining_seconds(
    done: dict[str, int], total: dict[str, int], mean_s: dict[str, float], concurrency: float
) -> float | None:
    """Time left: each rule's jobs still to run x that rule's mean job time so far, over the jobs running
    at once. A rule none of whose jobs has a time yet counts at the mean of the rules that have one;
    None before any job has a time."""
    if not mean_s or concurrency <= 0:
        return None
    fallback = sum(mean_s.values()) / len(mean_s)
    work = sum((total[r] - done.get(r, 0)) * mean_s.get(r, fallback) for r in total)
    return work / concurrency


def format_duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def study_progress_line(
    done: dict[str, int], total: dict[str, int], running: dict[str, int], left_s: float | None
) -> str:
    """One line a person can read: jobs done of all, each unfinished rule's count, what runs now, time left."""
    n_done, n_total = sum(done.values()), sum(total.values())
    rules = ", ".join(f"{r} {done.get(r, 0)}/{n}" for r, n in sorted(total.items()) if done.get(r, 0) < n)
    now = ", ".join(f"{r} x{n}" for r, n in sorted(running.items())) or "-"
    left = "estimating" if left_s is None else f"about {format_duration(left_s)} left"
    return f"resurgence: {n_done}/{n_total} jobs done ({rules or 'all rules done'}); running: {now}; {left}"


def benchmark_seconds(path: str | Path) -> float | None:
    """A Snakemake benchmark file's wall seconds (its first row's ``s``), or None if it is not written yet."""
    try:
        header, row = Path(path).read_text().splitlines()[:2]
        return float(dict(zip(header.split("\t"), row.split("\t"), strict=False))["s"])
    except (OSError, ValueError, KeyError):
        return None


def watch_study(
    dag: Any, max_jobs: int | None, interval: float = STUDY_REFRESH_S, stream: Any = None
) -> threading.Thread:
    """Print `study_progress_line` every ``interval`` seconds while Snakemake runs ``dag``'s jobs.

    Reads the DAG's jobs as they are when called (the study has no checkpoints, so it does not grow),
    ``dag.finished``, the jobs running now and the benchmark files of this run's finished jobs.
    """
    stream = stream or sys.stderr
    jobs = list(dag.needrun_jobs())
    total = Counter(j.rule.name for j in jobs)
    started = time.monotonic()

    def report() -> int:
        done = Counter()
        seconds: dict[str, list[float]] = {}
        for j in jobs:
            if dag.finished(j):
                done[j.rule.name] += 1
                s = benchmark_seconds(j.benchmark) if j.benchmark else None
                if s is not None:
                    seconds.setdefault(j.rule.name, []).append(s)
        mean = {r: sum(v) / len(v) for r, v in seconds.items()}
        try:
            running = Counter(j.rule.name for j in list(getattr(dag, "_running", ())))
        except RuntimeError:  # changed while copied
            running = Counter()
        # Jobs running at once so far: job-seconds finished over wall seconds, at most ``max_jobs``
        # (the cores of a local run, the jobs of a cluster run; None: no bound).
        elapsed = time.monotonic() - started
        busy = sum(sum(v) for v in seconds.values())
        concurrency = max(busy / elapsed, 1.0) if elapsed > 0 and busy else 1.0
        if max_jobs:
            concurrency = min(concurrency, float(max_jobs))
        print(
            study_progress_line(done, total, running, remaining_seconds(done, total, mean, concurrency)),
            file=stream,
            flush=True,
        )
        return sum(done.values())

    def loop() -> None:
        while True:
            time.sleep(interval)
            if report() >= len(jobs):
                return

    thread = threading.Thread(target=loop, name="study-progress", daemon=True)
    thread.start()
    return thread
