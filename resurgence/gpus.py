"""One GPU per job on a multi-GPU node: jobs claim a free device through lock files.

Snakemake's ``--resources gpu=N`` bounds how many GPU jobs run at once but does not say which
device each should use; without help every job lands on GPU 0. A job claims the lowest GPU whose
lock (``fcntl.flock`` on ``<lock_dir>/gpu-<i>.lock``) it can take and pins itself to it with
``CUDA_VISIBLE_DEVICES`` before CUDA is initialised. The lock is held for the life of the process
and released by the kernel when it exits, however it exits. Where the scheduler already chose the
device (Slurm sets ``CUDA_VISIBLE_DEVICES``) nothing is claimed.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from resurgence.jobs import try_flock

SLOTS_ENV = (
    "RESURGENCE_GPU_SLOTS"  # number of GPUs to share out (the Snakefile sets it from --resources gpu=N)
)
LOCK_DIR_ENV = "RESURGENCE_GPU_LOCK_DIR"

_held: list[int] = []  # open lock descriptors: kept for the process's life


def default_lock_dir() -> Path:
    return Path(
        os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"resurgence-gpus-{os.getuid()}"
    )


def claim_gpu(
    n_gpus: int, lock_dir: str | os.PathLike | None = None, timeout_s: float = 600.0, poll_s: float = 0.5
) -> int:
    """Take the lowest free GPU index in ``range(n_gpus)`` and hold it until the process exits.

    Waits (up to ``timeout_s``) when all are taken: with ``--resources gpu=N`` that only happens
    while a finished job's process is still exiting.
    """
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    d = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    d.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        for i in range(n_gpus):
            fd = try_flock(d / f"gpu-{i}.lock")
            if fd is not None:
                _held.append(fd)
                return i
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU among {n_gpus} after {timeout_s:.0f} s (locks in {d})")
        time.sleep(poll_s)


def pin_job_to_gpu(env: dict[str, str] | None = None) -> int | None:
    """Claim a GPU for this job and set ``CUDA_VISIBLE_DEVICES``; None when there is nothing to share out."""
    env = os.environ if env is None else env
    slots = int(env.get(SLOTS_ENV) or 0)
    if slots < 2 or env.get("CUDA_VISIBLE_DEVICES"):
        return None
    i = claim_gpu(slots)
    env["CUDA_VISIBLE_DEVICES"] = str(i)
    return i
