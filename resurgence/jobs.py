"""A job's hold on what it writes: one writer per artifact folder, no job outliving the Snakemake run
that started it, and the Snakemake locks of a killed run released.

Snakemake starts each job as ``bash -c '...; python -m resurgence <stage> ...'``. Killed with SIGKILL
it can neither stop its jobs (they would keep training and writing) nor remove its locks in
``.snakemake/locks``. So the Snakefile names its own process in the environment (`adopt_jobs`), every
job watches that process and its own parent and stops when either ends (`watch_owner`), and the next
run of the Snakefile removes locks whose every possible holder has ended (`release_stale_locks`).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

OWNER_ENV = "RESURGENCE_SNAKEMAKE"
LOCK_FILE = ".writer.lock"
RUNS_DIR = "resurgence-runs"  # under .snakemake/: one record per live Snakemake process of this study


class ArtifactBusy(RuntimeError):
    """Another live process is writing the same artifact folder."""


def start_time(proc: psutil.Process) -> float | int:
    """When a process started, in a form that stays the same for its whole life.

    On Linux: clock ticks since boot, from /proc (psutil's ``create_time`` adds the boot time as the
    system clock gives it now, so a clock adjustment, NTP's say, shifts it and a job took its live
    owner for ended). Elsewhere: ``create_time`` to the second.
    """
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
    except OSError:
        return round(proc.create_time())
    # Field 22 (starttime); the command name, field 2, is in parentheses and may hold spaces.
    return int(stat.rsplit(")", 1)[1].split()[19])


def process_identity(pid: int | None = None) -> dict[str, object]:
    """A process as it can be recognised later: host, PID and start time (PIDs are reused)."""
    proc = psutil.Process(pid or os.getpid())
    return {"host": socket.gethostname(), "pid": proc.pid, "started": start_time(proc)}


def is_running(identity: dict[str, object]) -> bool:
    """Whether the identified process still runs; a process of another host counts as running."""
    if identity.get("host") != socket.gethostname():
        return True
    try:
        proc = psutil.Process(int(identity["pid"]))
        return start_time(proc) == identity["started"] and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError, TypeError):
        return False


# ----------------------------------------------------------------------------- in a job


def try_flock(path: str | os.PathLike) -> int | None:
    """An exclusive ``flock`` on ``path`` (created if absent), stamped with this process; its open
    descriptor, or None when another process holds it. The kernel releases it when the process ends."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def exclusive_writer(folder: str | os.PathLike) -> Iterator[None]:
    """Hold ``folder`` for this process until the block ends (any exit, SIGKILL included, releases it).

    A second writer fails at once with `ArtifactBusy` naming the holder's PID, instead of two
    processes interleaving checkpoints or images in one folder.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    fd = try_flock(root / LOCK_FILE)
    if fd is None:
        holder = (root / LOCK_FILE).read_text(errors="replace").strip() or "unknown"
        raise ArtifactBusy(
            f"{root} is being written by another process ({holder}); wait for it to end or stop it"
        )
    try:
        yield
    finally:
        os.close(fd)


def stop_on_sigterm() -> None:
    """SIGTERM ends the job through Python's exit path, so temporaries are removed and locks released."""

    def handler(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def watch_owner(
    environ: MutableMapping[str, str] = os.environ, interval: float = 1.0, grace: float = 30.0
) -> bool:
    """Stop this job when the Snakemake process that started it ends, or when it loses its parent.

    Only for jobs started by this study's Snakefile (`OWNER_ENV` set); the job is sent SIGTERM and,
    if it has not exited ``grace`` seconds later, ends at once. Returns whether a watch was started.
    """
    if OWNER_ENV not in environ:
        return False
    owner = json.loads(environ[OWNER_ENV])
    parent = os.getppid()

    def watch() -> None:
        while is_running(owner) and os.getppid() == parent:
            time.sleep(interval)
        log.error(
            "the Snakemake run that started this job (PID %s) has ended; stopping the job", owner.get("pid")
        )
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()
    return True


# ----------------------------------------------------------------------------- in the Snakefile


def adopt_jobs(environ: MutableMapping[str, str] = os.environ) -> None:
    """Name this (Snakemake) process as the owner of every job it starts (`watch_owner`)."""
    environ[OWNER_ENV] = json.dumps(process_identity())


def release_stale_locks(snakemake_dir: str | os.PathLike = ".snakemake") -> list[int]:
    """Record this Snakemake process, and remove Snakemake's locks if every recorded run has ended.

    A run killed with SIGKILL leaves its locks behind, and Snakemake then refuses every later run
    until ``--unlock``. Locks are removed only when no other recorded run of this study still runs
    (a run on another host counts as running), so a live run's locks are never touched. Returns the
    PIDs of the ended runs whose locks were removed.
    """
    root = Path(snakemake_dir)
    runs = root / RUNS_DIR
    runs.mkdir(parents=True, exist_ok=True)
    ended, running = [], False
    for record in runs.glob("*.json"):
        try:
            identity = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if is_running(identity):
            running = True
        else:
            ended.append((record, identity))
    locks = list((root / "locks").glob("*.lock")) if (root / "locks").is_dir() else []
    released = []
    if ended and not running and locks:
        for lock in locks:
            lock.unlink(missing_ok=True)
        released = sorted(int(i["pid"]) for _, i in ended)
    for record, _ in ended:
        record.unlink(missing_ok=True)
    me = process_identity()
    mine = runs / f"{me['host']}-{me['pid']}.json"
    mine.write_text(json.dumps(me))
    atexit.register(mine.unlink, missing_ok=True)
    return released
