"""Shared helpers of the benchmark scripts: describe the machine, append one result row."""

from __future__ import annotations

import ast
import contextlib
import fcntl
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")

RESULTS = Path(__file__).resolve().parent / "results.jsonl"


def machine() -> dict[str, Any]:
    """What the numbers were measured on: host, CPU, threads, GPU and library versions."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(
        host=platform.node(),
        cpu=cpu,
        cpu_count=os.cpu_count(),
        # hosts of one CPU name differ in vector units: bf16 runs 40x slower on AVX2 than with AVX512-BF16
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        torch_threads=torch.get_num_threads(),
        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        gpu_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
        torch=torch.__version__,
    )


def command_seconds(cmd: list[str], cwd: str | os.PathLike) -> float:
    """Wall seconds of a command run to completion (output captured; a failure raises)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


def record(benchmark: str, result: dict[str, Any], path: Path = RESULTS) -> dict[str, Any]:
    row = dict(benchmark=benchmark, date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), machine=machine(), **result)
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
    print(json.dumps(row, indent=2, sort_keys=True))
    return row


def fast_cuda_math(device: str | torch.device, autotune: bool = False) -> None:
    """TF32 matmuls/convolutions on CUDA (and cuDNN autotuning), as every benchmark measures them."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = autotune


def inductor_settings(pairs: list[str] | None):
    """A context patching ``torch._inductor.config`` with ``key=value`` pairs (values as Python literals),
    for trying inductor's knobs on a benchmark without making them engine options; hold it while
    the compiled module first runs (it traces then)."""
    if not pairs:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not hasattr(inductor_config, key):
            raise SystemExit(f"--inductor takes key=value with a torch._inductor.config key, got {pair!r}")
        settings[key] = ast.literal_eval(value)
    return inductor_config.patch(settings)


@contextlib.contextmanager
def gpu_lock(path: str | None, parties: int = 1, wait_s: float = 300.0):
    """Hold an exclusive lock on ``path`` (None: no lock), with cuDNN autotuning on while held.

    Variants run side by side compile with autotuning off, wait until all ``parties`` have
    compiled (or ``wait_s`` passed), then autotune and time one at a time: once the first timing
    starts no other process works on the GPU or the CPU, so neither the kernels chosen nor the
    times see another's work.
    """
    if path is None:
        yield
        return
    ready = Path(f"{path}.ready")
    ready.mkdir(exist_ok=True)
    (ready / str(os.getpid())).touch()
    deadline = time.monotonic() + wait_s
    while len(list(ready.iterdir())) < parties and time.monotonic() < deadline:
        time.sleep(1.0)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        torch.backends.cudnn.benchmark = True
        yield


def toy_erase_setup(task: str, erase: str, device: str) -> tuple[torch.device, Any, dict[str, Any], Any]:
    """(device, the toy world, the study's erase spec of ``task`` and ``erase``, the shipped text-to-image
    pipeline on the device): what the erasure benchmarks start from. TF32 on as `fast_cuda_math` sets it."""
    from resurgence import study
    from resurgence.config import load_config
    from resurgence.models.pipeline import load_pipeline
    from resurgence.world import get_world

    root = Path(__file__).resolve().parents[1]
    dev = torch.device(device)
    fast_cuda_math(dev)
    config = load_config([root / "config.yaml"])
    world = get_world(config)
    spec = study.erase_spec(config, task, erase, world)
    pipe = load_pipeline(root / study.toy_models_dir(config) / "t2i", device=dev)
    return dev, world, spec, pipe


def timed(device: torch.device, fn: Callable[[], T]) -> tuple[float, T]:
    """(wall seconds, result) of ``fn()``, with the device's queued work finished on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, out
