"""GPU jobs sharing a GPU through a CUDA MPS server of the run's own (`gpu_sharing: mps`).

Without MPS, the processes that share a GPU take turns on it: the GPU switches between their contexts, and
the toy world's jobs, which launch many small kernels each, leave it idle between their turns. An MPS server
runs every client's kernels in one context, side by side. The study starts its own control daemon
(``nvidia-cuda-mps-control -d``) with a pipe folder of its own, names it to the jobs in the environment they
inherit (``CUDA_MPS_PIPE_DIRECTORY``), and stops it when the run ends: processes that are not the run's jobs
never connect to it. Where an MPS daemon is named already (the variable is set) the jobs use that one and
the run starts none. Where the control program is missing or does not start, the jobs share the GPU the
ordinary way and the run says so. Results do not depend on it: a job computes the same kernels either way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

CONTROL = "nvidia-cuda-mps-control"
PIPE_ENV = "CUDA_MPS_PIPE_DIRECTORY"
LOG_ENV = "CUDA_MPS_LOG_DIRECTORY"
SHARING = ("time_slicing", "mps")  # the config key's values (`gpu_sharing`)


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
        _say(f"gpu_sharing: mps, but {control} is not on PATH; GPU jobs share the GPU without MPS")
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
            "GPU jobs share the GPU without MPS"
        )
        return None
    environ[PIPE_ENV], environ[LOG_ENV] = str(pipe_dir), str(logs)
    _say(f"GPU jobs share the GPU through an MPS daemon of this run (log: {logs})")
    return MpsDaemon(program, pipe_dir, logs)


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
