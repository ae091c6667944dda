"""GPU jobs sharing a GPU through a CUDA MPS server of the run's own (`gpu_sharing`: auto or mps).

Without MPS, the processes that share a GPU take turns on it: the GPU switches between their contexts, and
the toy world's jobs, which launch many small kernels each, leave it idle between their turns. An MPS server
runs every client's kernels in one context, side by side. The study starts its own control daemon
(``nvidia-cuda-mps-control -d``) with a pipe folder of its own, names it to the jobs in the environment they
inherit (``CUDA_MPS_PIPE_DIRECTORY``), and stops it when the run ends: processes that are not the run's jobs
never connect to it. Where an MPS daemon is named already (the variable is set) the jobs use that one and
the run starts none. Where the control program is missing or does not start, the jobs share the GPU the
ordinary way and the run says so. Results do not depend on it: a job computes the same kernels either way.
A watcher process quits the daemon if the Snakemake run ends without doing so (killed), so that no daemon
outlives its run.

Measured (2026-12-06, lent H100, 16 cores, one device session): the default study's 352 jobs, 16 sharing the
GPU, took 270.1 s taking turns and 176.1 s through MPS (docs/study_speed.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CONTROL = "nvidia-cuda-mps-control"
PIPE_ENV = "CUDA_MPS_PIPE_DIRECTORY"
LOG_ENV = "CUDA_MPS_LOG_DIRECTORY"
# The config key's values (`gpu_sharing`): auto is MPS where a machine's GPUs are shared by several jobs each.
SHARING = ("auto", "time_slicing", "mps")
# What a run says when it cannot start the daemon and goes on without it.
_WITHOUT_MPS = "GPU jobs take turns on the GPU, without MPS (gpu_sharing)"


def wanted(sharing: str, devices: int, slots: int) -> bool:
    """Whether a local run on ``devices`` GPUs with ``slots`` GPU job slots starts an MPS daemon."""
    if sharing not in SHARING:
        raise ValueError(f"gpu_sharing is {sharing!r}; allowed values: {list(SHARING)}")
    if devices < 1 or sharing == "time_slicing":
        return False
    return sharing == "mps" or slots > devices


@dataclass(frozen=True)
class MpsDaemon:
    """A control daemon this run started: its program and folders."""

    control: str
    pipe_dir: Path
    log_dir: Path


def _say(message: str) -> None:
    print(f"resurgence: {message}", file=sys.stderr)


def start_mps(
    log_dir: str | os.PathLike, environ: MutableMapping[str, str] | None = None, control: str = CONTROL
) -> MpsDaemon | None:
    """Start a control daemon of this run's own and name it in ``environ`` (the jobs inherit it); None where
    the jobs use a daemon named already, or share the GPU without one (the reason is printed)."""
    environ = os.environ if environ is None else environ
    if environ.get(PIPE_ENV):
        _say(f"GPU jobs use the MPS daemon named in {PIPE_ENV} ({environ[PIPE_ENV]})")
        return None
    program = shutil.which(control, path=environ.get("PATH"))
    if program is None:
        _say(f"{control} is not on PATH: {_WITHOUT_MPS}")
        return None
    # The pipe folder holds sockets, whose paths must stay short: a fresh folder under the temporary
    # folder, readable by this user alone.
    pipe_dir = Path(tempfile.mkdtemp(prefix="resurgence-mps-"))
    logs = Path(log_dir).resolve()  # the daemon leaves the working folder
    logs.mkdir(parents=True, exist_ok=True)
    env = {**environ, PIPE_ENV: str(pipe_dir), LOG_ENV: str(logs)}
    done = subprocess.run([program, "-d"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(pipe_dir, ignore_errors=True)
        _say(
            f"{control} -d exited with {done.returncode} ({(done.stderr or done.stdout).strip()}); "
            + _WITHOUT_MPS
        )
        return None
    environ[PIPE_ENV], environ[LOG_ENV] = str(pipe_dir), str(logs)
    _say(f"GPU jobs share the GPU through an MPS daemon of this run (log: {logs})")
    daemon = MpsDaemon(program, pipe_dir, logs)
    _watch(daemon, environ)
    return daemon


def _watch(daemon: MpsDaemon, environ: MutableMapping[str, str]) -> None:
    """A detached watcher that quits ``daemon`` once the Snakemake run that started it has ended."""
    from resurgence.jobs import OWNER_ENV

    if OWNER_ENV not in environ:
        return
    cmd = [sys.executable, "-m", "resurgence.mps", "--owner", environ[OWNER_ENV], "--control", daemon.control]
    cmd += ["--pipe-dir", str(daemon.pipe_dir), "--log-dir", str(daemon.log_dir)]
    subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(environ),
    )


def stop_mps(daemon: MpsDaemon | None, environ: MutableMapping[str, str] | None = None) -> None:
    """Stop a daemon `start_mps` started (its server ends with it) and drop its names from ``environ``."""
    if daemon is None:
        return
    environ = os.environ if environ is None else environ
    env = {**environ, PIPE_ENV: str(daemon.pipe_dir), LOG_ENV: str(daemon.log_dir)}
    subprocess.run([daemon.control], input="quit\n", env=env, capture_output=True, text=True, timeout=60)
    for key in (PIPE_ENV, LOG_ENV):
        if environ.get(key) == env[key]:
            del environ[key]
    shutil.rmtree(daemon.pipe_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The watcher: wait while the owner runs and the daemon's pipe folder exists, then quit the daemon."""
    from resurgence.jobs import is_running

    p = argparse.ArgumentParser(prog="python -m resurgence.mps", description=main.__doc__)
    p.add_argument("--owner", type=json.loads, required=True, help="the Snakemake run (JSON identity)")
    p.add_argument("--control", required=True)
    p.add_argument("--pipe-dir", type=Path, required=True)
    p.add_argument("--log-dir", type=Path, required=True)
    p.add_argument("--interval", type=float, default=1.0)
    args = p.parse_args(argv)
    while is_running(args.owner) and args.pipe_dir.exists():
        time.sleep(args.interval)
    if args.pipe_dir.exists():  # the run ended without quitting it
        stop_mps(MpsDaemon(args.control, args.pipe_dir, args.log_dir), {})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
