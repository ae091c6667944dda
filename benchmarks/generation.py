"""Generation throughput (images/s) of a Stable-Diffusion-architecture pipeline.

Weights do not change the cost, so random weights of the architecture are used unless a
pipeline folder is given. Appends a row to benchmarks/results.jsonl naming the machine.

    python benchmarks/generation.py --arch toy --device cpu --batch 32 --steps 25
"""

from __future__ import annotations

import argparse
import time

import torch
from common import record  # benchmarks/ is on sys.path when run as a script

from resurgence.generate.engine import GenerationConfig, generate
from resurgence.models.pipeline import ARCHITECTURES, build_random_pipeline, load_pipeline


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="toy", choices=sorted(ARCHITECTURES))
    p.add_argument("--pipeline", help="a saved pipeline folder instead of random weights")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--images", type=int, default=64, help="images timed after one warm-up batch")
    args = p.parse_args(argv)

    pipe = load_pipeline(args.pipeline) if args.pipeline else build_random_pipeline(args.arch)
    cfg = GenerationConfig(steps=args.steps, guidance_scale=args.guidance, batch_size=args.batch, dtype=args.dtype)
    prompts = [f"a photo of the thing number {i}" for i in range(args.images)]
    generate(pipe, prompts[: args.batch], list(range(args.batch)), cfg, device=args.device, progress=False)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    generate(pipe, prompts, list(range(args.images)), cfg, device=args.device, progress=False)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    record(
        "generation",
        dict(
            arch=args.pipeline or args.arch,
            device=args.device,
            dtype=args.dtype,
            batch=args.batch,
            steps=args.steps,
            guidance=args.guidance,
            images=args.images,
            seconds=round(elapsed, 3),
            images_per_s=round(args.images / elapsed, 3),
            peak_gpu_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3) if args.device.startswith("cuda") else None,
        ),
    )


if __name__ == "__main__":
    main()
