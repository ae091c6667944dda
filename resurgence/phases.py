"""Where a job's time goes: its phases timed where they run, printed as one line when the job ends.

Snakemake's benchmark file gives a job's wall time; this splits it into start-up, loading models,
sampling, training, scoring and writing, so that the study's profile (`benchmarks/study.py`) says which of
them a speed change has to cut. A phase entered inside another counts only in the inner one, so a job's
phases add up to its time; what no phase covers is ``other``.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# The phases a job's time is split into.
STARTUP = "startup"  # from the interpreter's start (or the fork server's client) to the stage's first line
LOAD = "load"  # models and weights read and moved to the device
SAMPLE = "sample"  # diffusion sampling (the images' arithmetic)
TRAIN = "train"  # erasure and fine-tuning updates, their data encoding included
SCORE = "score"  # evaluators and diagnostics
WRITE = "write"  # images, tables and weights written
OTHER = "other"  # the rest of the job: lazy imports, bookkeeping
PHASES = (STARTUP, LOAD, SAMPLE, TRAIN, SCORE, WRITE, OTHER)

TAG = "resurgence-phases:"  # the log line's prefix
START_ENV = "RESURGENCE_JOB_START"  # the job's start (epoch seconds), set by `python -m resurgence`


@dataclass
class PhaseClock:
    """Seconds per phase; a phase's time excludes the phases entered inside it (its self time)."""

    clock: Callable[[], float] = time.perf_counter
    seconds: dict[str, float] = field(default_factory=dict)
    _open: list[list[Any]] = field(default_factory=list)  # [name, seconds spent in inner phases]

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in PHASES:
            raise ValueError(f"phase must be one of {list(PHASES)}, got {name!r}")
        start = self.clock()
        self._open.append([name, 0.0])
        try:
            yield
        finally:
            _, inner = self._open.pop()
            elapsed = self.clock() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - inner
            if self._open:
                self._open[-1][1] += elapsed

    def reset(self) -> None:
        self.seconds.clear()
        self._open.clear()


JOB_CLOCK = PhaseClock()


def phase(name: str):
    """Time a block of the running job as phase ``name`` (one of `PHASES`)."""
    return JOB_CLOCK.phase(name)


def in_phase(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: every call of the function is timed as phase ``name``."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with phase(name):
                return fn(*args, **kwargs)

        return timed

    return decorate


def job_start(environ: dict[str, str] | os._Environ = os.environ) -> float:
    """The job's start in epoch seconds: when `python -m resurgence` began, or now if it did not say."""
    try:
        return float(environ[START_ENV])
    except (KeyError, ValueError):
        return time.time()


def split_job(seconds: dict[str, float], startup_s: float, total_s: float) -> dict[str, float]:
    """The job's ``total_s`` split into every phase of `PHASES`, ``other`` the time no phase covers."""
    split = {p: seconds.get(p, 0.0) for p in PHASES if p not in (STARTUP, OTHER)}
    split = {STARTUP: startup_s, **split}
    split[OTHER] = max(total_s - sum(split.values()), 0.0)
    return {k: round(v, 3) for k, v in split.items()}


def phases_line(split: dict[str, float]) -> str:
    return f"{TAG} {json.dumps(split, sort_keys=True)}"


def parse_phases(lines: Iterable[str]) -> dict[str, float] | None:
    """The phases a job's log reports (its last `phases_line`), or None if it has none."""
    found = None
    for line in lines:
        at = line.find(TAG)  # a progress bar may share the line: it ends in a carriage return, not a newline
        if at >= 0:
            found = {k: float(v) for k, v in json.loads(line[at + len(TAG) :]).items()}
    return found
