"""GPU jobs on one machine: several share a GPU, and on a multi-GPU node they spread over the devices.

Snakemake's ``--resources gpu=N`` bounds how many GPU jobs run at once (N job slots) but does not say
which device each should use; without help every job lands on GPU 0. Where the user gives no ``gpu``
resource, the Snakefile sets N to the machine's GPUs x ``gpu_jobs_per_device`` (the toy world's jobs
use a fraction of a GPU each). A job claims the lowest slot whose lock (``fcntl.flock`` on
``<lock_dir>/gpu-<i>.lock``) it can take and pins itself to device ``slot % GPUs`` with
``CUDA_VISIBLE_DEVICES`` before CUDA is initialised, so the first jobs get a device each and later ones
share them evenly. The lock is held for the life of the process and released by the kernel when it
exits, however it exits. Where the scheduler already chose the device (Slurm sets
``CUDA_VISIBLE_DEVICES``), or the machine has one GPU, nothing is claimed.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from resurgence.jobs import try_flock

SLOTS_ENV = "RESURGENCE_GPU_SLOTS"  # GPU job slots (the Snakefile sets it from --resources gpu=N)
DEVICES_ENV = "RESURGENCE_GPU_DEVICES"  # the machine's GPUs (the Snakefile sets it; absent: one per slot)
NVIDIA_PROC = "/proc/driver/nvidia/gpus"  # one folder per GPU the driver sees
LOCK_DIR_ENV = "RESURGENCE_GPU_LOCK_DIR"
# The threads a GPU-capable job asks for on a machine without GPUs, where its arithmetic runs on them
# (Snakemake scales it down to --cores).
CPU_JOB_THREADS = 4

_held: list[int] = []  # open lock descriptors: kept for the process's life


def default_lock_dir() -> Path:
    return Path(
        os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"resurgence-gpus-{os.getuid()}"
    )


def claim_gpu(
    n_gpus: int, lock_dir: str | os.PathLike | None = None, timeout_s: float = 600.0, poll_s: float = 0.5
) -> int:
    """Take the lowest free GPU job slot in ``range(n_gpus)`` and hold it until the process exits.

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


def count_gpus(env: dict[str, str] | None = None, proc_dir: str | os.PathLike = NVIDIA_PROC) -> int:
    """The GPUs this process may use, without initialising CUDA: those ``CUDA_VISIBLE_DEVICES`` lists
    where it is set, else those the NVIDIA driver shows (0 without the driver)."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")])
    d = Path(proc_dir)
    return sum(1 for p in d.iterdir() if p.is_dir()) if d.is_dir() else 0


def default_gpu_slots(devices: int, jobs_per_device: int) -> int | None:
    """How many GPU jobs run at once when the user set no ``gpu`` resource: ``jobs_per_device`` on each
    GPU; None (no bound) on a machine without GPUs, where the cores bound the jobs."""
    return devices * jobs_per_device if devices > 0 else None


def job_threads(devices: int, gpu_job_threads: int) -> int:
    """The CPU threads of each GPU-capable job: ``gpu_job_threads`` where the machine has GPUs (the GPU does
    the arithmetic, so more jobs at one thread each keep it busier), else ``CPU_JOB_THREADS``."""
    if gpu_job_threads < 1:
        raise ValueError(f"gpu_job_threads must be >= 1, got {gpu_job_threads}")
    return gpu_job_threads if devices > 0 else CPU_JOB_THREADS


def pin_job_to_gpu(env: dict[str, str] | None = None) -> int | None:
    """Claim a GPU job slot, pin this job to its device (``CUDA_VISIBLE_DEVICES``) and return the device;
    None when there is no choice to make (one slot, one device, or a device chosen already)."""
    env = os.environ if env is None else env
    slots = int(env.get(SLOTS_ENV) or 0)
    devices = int(env.get(DEVICES_ENV) or slots)
    if slots < 2 or devices < 2 or env.get("CUDA_VISIBLE_DEVICES"):
        return None
    device = claim_gpu(slots) % devices
    env["CUDA_VISIBLE_DEVICES"] = str(device)
    return device
