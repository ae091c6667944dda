"""What a GPU job's "load" phase is made of: CUDA's per-process start-up, alone and with jobs beside it.

The study's GPU jobs spend 1.6-3.1 s each loading (docs/study_speed.md) against 0.26 s for an evaluation on
the CPU. Each job is a fork of the fork server (torch imported, CUDA not initialised), so it pays for its own
CUDA context, its own cuBLAS and cuDNN handles, and the move of its toy models to the GPU. This forks
``--procs`` such processes at once, as the study does, and times each step in each of them:

  context  ``torch.cuda.init()`` and a first tensor on the device, synchronised;
  cublas   a first matmul (cuBLAS's handle and workspace);
  cudnn    a first convolution (cuDNN's handle and its heuristics);
  pipeline the toy text-to-image pipeline loaded from ``resources/toyworld`` and moved to the device.

A row per process count, with the median and the slowest process's seconds per step, so that the share of
the load phase a warm process (CUDA initialised before the job arrives) could take off is measured, not
guessed.

    python benchmarks/cuda_startup.py --procs 1 16
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import torch
from common import record  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("context", "cublas", "cudnn", "pipeline")


def _one_process(device: str, pipeline: str, start, out) -> None:
    """Time each start-up step in a fresh fork, after every process has reached the barrier; an error is
    reported as the process's result, so that the parent never waits for a result that cannot come."""
    start.wait()
    try:
        out.put(_startup_seconds(device, pipeline))
    except Exception as e:  # noqa: BLE001 - re-raised by the parent
        out.put({"error": f"{type(e).__name__}: {e}"})


def _startup_seconds(device: str, pipeline: str) -> dict[str, float]:
    seconds: dict[str, float] = {}
    cuda = device.startswith("cuda")

    def step(name: str, fn) -> None:
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        seconds[name] = time.perf_counter() - t0

    step("context", lambda: (cuda and torch.cuda.init(), torch.zeros(1, device=device)))
    step("cublas", lambda: torch.ones(64, 64, device=device) @ torch.ones(64, 64, device=device))
    step(
        "cudnn",
        lambda: torch.nn.functional.conv2d(
            torch.ones(1, 4, 8, 8, device=device), torch.ones(4, 4, 3, 3, device=device)
        ),
    )

    def load() -> None:
        from resurgence.models.pipeline import load_pipeline

        load_pipeline(ROOT / pipeline, device=device)

    step("pipeline", load)
    return seconds


def time_startup(procs: int, device: str, pipeline: str) -> list[dict[str, float]]:
    """Fork ``procs`` processes that start CUDA at the same moment; each one's seconds per step."""
    ctx = mp.get_context("fork")
    start, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_one_process, args=(device, pipeline, start, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    results = [out.get(timeout=600) for _ in workers]
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"{len(errors)} of {procs} start-up processes failed: {errors[0]}")
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"a start-up process exited with {w.exitcode}")
    return results


def summary(results: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median and slowest seconds per step, and of the steps' total, over the processes."""
    rows = [dict(r, total=sum(r.values())) for r in results]
    return {
        k: {
            "median_s": round(statistics.median(r[k] for r in rows), 4),
            "max_s": round(max(r[k] for r in rows), 4),
        }
        for k in (*STEPS, "total")
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 16], help="processes started at once")
    p.add_argument("--device", default="cuda")
    p.add_argument("--pipeline", default="resources/toyworld/t2i", help="the toy pipeline, from the checkout")
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    from resurgence.forkserver import preload_before_forks

    preload_before_forks()  # as the fork server does before its forks

    # every fork first: the parent touches CUDA (the row's machine) only after its forks are done with it
    timings = {n: time_startup(n, args.device, args.pipeline) for n in args.procs}
    for n, results in timings.items():
        record("cuda_startup", dict(procs=n, device=args.device, steps=summary(results), label=args.label))


if __name__ == "__main__":
    main()
