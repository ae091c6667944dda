"""Fine-tuning cost (optimizer steps/s, images/s, TFLOP/s achieved, peak memory) of LoRA and full fine-tuning.

The study's own `resurgence.finetune.train.finetune` on random weights of the architecture
(weights do not change the cost), on a fine-tune set of random-noise images captioned like the
paper's (App. C.1 templates). The trainer encodes each example once (VAE and frozen text encoder; the
default) or, as diffusers' scripts do, every batch at every step: ``--encodings both`` times the two one after
the other in this run and gives the cached arm's ratio (`vs_every_step`); the timed steps of the cached arm
include the encodes of examples first drawn in them. A step's FLOPs (every step: VAE encode, text encoder, UNet
forward and backward; cached: the UNet's) are counted with `torch.utils.flop_counter` as the difference of a
2-step and a 1-step run at batch 1, times the batch (every counted op, matmul, convolution, attention, is per
sample; tested), so that the count is cheap on any device. Appends one row per method to benchmarks/results.jsonl;
`--flops-only` counts without timing (rows "finetune_flops"; FLOPs do not depend on the device
or on mixed precision, so a CPU count applies to GPU rows of the same architecture and batch).
``--profile-steps N`` also profiles each timed arm (rows "finetune_profile"): the kernels (on a CPU, the
operators) of N steps, as the difference of a profiled 2-step and (2 + N)-step run, so that loading, the first
steps and saving drop out: kernel time and launches per step beside the step's wall time (a step whose kernels
take far less than its wall time waits on the host), by kind, and the top kernels. Issue 22 asks why LoRA
steps run slower than full ones on a GPU though they do fewer FLOPs; this is the measurement for it.

``--peft-input-casts both`` times the LoRA arm also with peft's casts of each adapter's input to fp32, which
the trainer turns off (`train.adapter_input_casts_off`; the same loss and gradients), and gives their ratio.
``--compile none default`` times each arm eager and with its UNet step compiled (`FinetuneConfig.compile`) and
gives the compiled arm's ratio to the eager one (`vs_eager`); the compile happens in each of an arm's three runs,
so it cancels from the timed difference as loading does (inductor's cache serves the second and third).

    python benchmarks/finetune.py --arch sd14 --methods lora full --steps 30 --batch 8 --mixed-precision bf16
    python benchmarks/finetune.py --arch sd14 --encodings cached --mixed-precision bf16 --compile none default
    python benchmarks/finetune.py --arch sd14 --batch 8 --flops-only --device cpu
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from common import fast_cuda_math, record  # benchmarks/ is on sys.path when run as a script
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from unet_profile import kernel_kind, kernel_totals

from resurgence.finetune import train
from resurgence.finetune.config import FinetuneConfig
from resurgence.finetune.train import finetune
from resurgence.generate import COMPILE_MODES
from resurgence.models.pipeline import ARCHITECTURES, build_random_pipeline

TEMPLATES = (
    "A portrait of {}",
    "An image capturing {} at a public event",
    "A sketch of {}",
    "An oil painting of {}",
    "{} in an official photo",
)


def noise_set(out: Path, n: int, resolution: int, seed: int = 0) -> Path:
    """A fine-tune set directory (metadata.jsonl + PNGs) of ``n`` noise images."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"images/{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(out / name)
        prompt = TEMPLATES[i % len(TEMPLATES)].format(f"Person {i // len(TEMPLATES)}")
        rows.append({"file_name": name, "prompt": prompt, "caption": prompt, "text": prompt, "seed": i})
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _config(method: str, steps: int, args, batch: int | None = None, compile: str = "none") -> FinetuneConfig:
    return FinetuneConfig(
        method=method, steps=steps, learning_rate=1e-5 if method == "full" else 1e-4,
        batch_size=batch or args.batch, rank=args.rank, checkpoint_every=10**6, seed=0,
        mixed_precision=args.mixed_precision, compile=compile,
    )  # fmt: skip


def counted_step_flops(arch: str, method: str, args, device: torch.device, work: Path, batch: int,
                       cache: bool) -> float:  # fmt: skip
    """FLOPs of one optimizer step of the study's `finetune` at ``batch`` (a 2-step run's count less a 1-step
    run's), on a set of one image: with ``cache`` the encoders run once per run, so both runs' encodes cancel and
    the step is the UNet's (and a training text encoder's) alone."""
    counts = {}
    for steps in (1, 2):
        pipe = build_random_pipeline(arch).to(device)
        data = work / "flops-set"
        if not data.exists():
            noise_set(data, 1, pipe.unet.config.sample_size * pipe.vae_scale_factor)
        with FlopCounterMode(display=False) as fc:
            finetune(pipe, data, _config(method, steps, args, batch), work / f"flops-{method}-{steps}-b{batch}-{cache}",
                     device=device, progress=False, cache_encodings=cache)  # fmt: skip
        counts[steps] = fc.get_total_flops()
        del pipe
    return float(counts[2] - counts[1])


def flops_per_step(arch: str, method: str, args, device: torch.device, work: Path, cache: bool) -> float:
    """FLOPs of one optimizer step at ``args.batch``: counted at batch 1, times the batch."""
    return args.batch * counted_step_flops(arch, method, args, device, work, batch=1, cache=cache)


def per_step(short: dict[str, tuple[float, int]], long: dict[str, tuple[float, int]], steps: int):
    """Each kernel's (microseconds, calls) per step: the longer run's totals less the shorter run's, over
    the ``steps`` it ran more (kernels of set-up, first steps and saving cancel)."""
    out = {}
    for key, (us, n) in long.items():
        us0, n0 = short.get(key, (0.0, 0))
        out[key] = ((us - us0) / steps, (n - n0) / steps)
    return out


def profile_steps(
    method: str, cache: bool, args, device: torch.device, data: Path, work: Path, compile: str = "none"
) -> dict:
    """A "finetune_profile" row's fields: `per_step` of a 2-step and a (2 + N)-step profiled run."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    totals, wall = {}, {}
    for steps in (2, 2 + args.profile_steps):
        pipe = build_random_pipeline(args.arch)
        pipe.to(device)
        with torch.profiler.profile(activities=activities) as prof:
            log = finetune(pipe, data, _config(method, steps, args, compile=compile),
                           work / f"profile-{method}-{steps}-{cache}-{compile}", device=device, progress=False,
                           cache_encodings=cache)  # fmt: skip
        wall[steps] = log["loop_s"]  # the training loop's, as the timed arms (saving left out)
        totals[steps] = kernel_totals(prof, device)
        del pipe
    steps = per_step(totals[2], totals[2 + args.profile_steps], args.profile_steps)
    by_kind: dict[str, list[float]] = {}
    for key, (us, n) in steps.items():
        kind = by_kind.setdefault(kernel_kind(key), [0.0, 0.0])
        kind[0] += us
        kind[1] += n
    top = sorted(steps.items(), key=lambda kv: -kv[1][0])[:15]
    return dict(
        profiled_steps=args.profile_steps,
        step_wall_ms=round((wall[2 + args.profile_steps] - wall[2]) / args.profile_steps * 1e3, 2),
        kernel_ms_per_step=round(sum(us for us, _ in steps.values()) / 1e3, 2),
        launches_per_step=round(sum(n for _, n in steps.values())),
        by_kind={k: dict(ms=round(v[0] / 1e3, 2), launches=round(v[1])) for k, v in sorted(by_kind.items())},
        top_kernels=[dict(name=k[:140], ms=round(us / 1e3, 3), calls=round(n, 1)) for k, (us, n) in top],
    )


@contextlib.contextmanager
def peft_input_casts(on: bool) -> Iterator[None]:
    """With ``on``, the trainer leaves peft's cast of each adapter's input to its fp32 weights on, as diffusers'
    scripts run it (the baseline of `train.adapter_input_casts_off`)."""
    if not on:
        yield
        return
    own = train.adapter_input_casts_off
    train.adapter_input_casts_off = lambda pipe, cfg: contextlib.nullcontext()
    try:
        yield
    finally:
        train.adapter_input_casts_off = own


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="toy", choices=sorted(ARCHITECTURES))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps (after 2 warm-up steps)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--images", type=int, default=50, help="size of the fine-tune set (App. C.1: 250)")
    p.add_argument("--flops-only", action="store_true", help="count a step's FLOPs, no timing")
    p.add_argument("--profile-steps", type=int, default=0, help="also profile N steps of each arm (0: no)")
    p.add_argument(
        "--encodings",
        default="both",
        choices=["cached", "every-step", "both"],
        help="the study's trainer encodes each example once (cached) or, as diffusers' scripts, every batch at "
        "every step; both: time the two one after the other in this run, with their ratio",
    )
    p.add_argument(
        "--peft-input-casts",
        default="off",
        choices=["off", "on", "both"],
        help="LoRA arms: the trainer turns peft's cast of each adapter's input to fp32 off (`adapter_input_casts_off`); "
        "on: peft's casts as diffusers' scripts run them; both: the two in this run, with their ratio",
    )
    p.add_argument(
        "--compile",
        nargs="+",
        default=["none"],
        choices=COMPILE_MODES,
        help="torch.compile modes of the UNet's training step to time, each an arm (FinetuneConfig.compile); "
        "with none among them, each compiled arm's ratio to it",
    )
    args = p.parse_args(argv)
    device = torch.device(args.device)
    fast_cuda_math(device)

    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    probe = build_random_pipeline(args.arch)
    resolution = probe.unet.config.sample_size * probe.vae_scale_factor
    del probe
    data = noise_set(work / "data", args.images, resolution)
    arms = {"cached": [True], "every-step": [False], "both": [False, True]}[args.encodings]
    cast_arms = {"off": [False], "on": [True], "both": [True, False]}[args.peft_input_casts]
    if args.flops_only:
        for method in args.methods:
            for cache in arms:
                step_flops = flops_per_step(args.arch, method, args, device, work, cache)
                record("finetune_flops", dict(arch=args.arch, method=method, device=str(device), resolution=resolution,
                                              batch=args.batch, rank=args.rank if method == "lora" else None,
                                              encodings_cached=cache,
                                              tflop_per_step=round(step_flops / 1e12, 4)))  # fmt: skip
        return
    flops: dict[tuple[str, bool], float] = {}
    # Every arm's eager run first, then its compiled runs (a compile can take minutes): by compile mode, then
    # method, encodings and peft's casts.
    steps_per_s: dict[tuple[str, bool, bool, str], float] = {}  # by (method, cached, peft's casts, compile)
    for mode, method, cache, casts in [
        (m, meth, c, k)
        for m in args.compile
        for meth in args.methods
        for c in arms
        for k in (cast_arms if meth == "lora" else [False])
    ]:
        timings, loops = {}, {}
        # A throwaway first run pays the process's one-time costs (CUDA context, cuDNN autotuning); the
        # difference of the last two runs' training loops (`loop_s`) removes set-up, loading, first-step
        # costs and saving (a full fine-tune writes SD v1.4's 3.4 GB fp32 UNet, whose time varies by
        # seconds: the 10 timed steps of 2026-12-06 took 0.6 s in one call and the whole-run difference
        # gave 16.4 steps/s, beside 4.4 in the next).
        for steps in (1, 2, 2 + args.steps):
            pipe = build_random_pipeline(args.arch)
            pipe.to(device)
            cfg = _config(method, steps, args, compile=mode)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            with peft_input_casts(casts):
                log = finetune(pipe, data, cfg, work / f"{method}-{steps}-{cache}-{casts}-{mode}",
                               device=device, progress=False, cache_encodings=cache)  # fmt: skip
            loops[steps] = log["loop_s"]
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings[steps] = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
            del pipe
            if device.type == "cuda":
                torch.cuda.empty_cache()
        dt = loops[2 + args.steps] - loops[2]
        steps_per_s[method, cache, casts, mode] = args.steps / dt
        if (method, cache) not in flops:  # counted eager: a compile does not change what a step computes
            flops[method, cache] = flops_per_step(args.arch, method, args, device, work, cache)
        step_flops = flops[method, cache]
        # What the arm is: the same fields in its timing row and its profile row.
        arm = dict(
            arch=args.arch,
            method=method,
            device=str(device),
            mixed_precision=args.mixed_precision,
            resolution=resolution,
            batch=args.batch,
            rank=args.rank if method == "lora" else None,
            encodings_cached=cache,
            peft_input_casts=casts if method == "lora" else None,
            compile=mode,
        )
        record(
            "finetune",
            dict(
                **arm,
                images=args.images,
                timed_steps=args.steps,
                timing="training loop",  # rows before 2026-12-06T09 timed whole runs, saving included
                seconds=round(dt, 2),
                steps_per_s=round(args.steps / dt, 3),
                images_per_s=round(args.steps * args.batch / dt, 2),
                tflop_per_step=round(step_flops / 1e12, 4),
                achieved_tflop_s=round(step_flops * args.steps / dt / 1e12, 1),
                fixed_overhead_s=round(timings[2] - 2 * dt / args.steps, 1),
                peak_gpu_mem_gib=round(peak, 2) if peak is not None else None,
                whole_run_s=round(timings[2 + args.steps], 2),
                vs_every_step=round(
                    steps_per_s[method, True, False, mode] / steps_per_s[method, False, False, mode], 3
                )
                if cache and not casts and (method, False, False, mode) in steps_per_s
                else None,
                vs_peft_input_casts=round(
                    steps_per_s[method, cache, False, mode] / steps_per_s[method, cache, True, mode], 3
                )
                if not casts and (method, cache, True, mode) in steps_per_s
                else None,
                vs_eager=round(
                    steps_per_s[method, cache, casts, mode] / steps_per_s[method, cache, casts, "none"], 3
                )
                if mode != "none" and (method, cache, casts, "none") in steps_per_s
                else None,
            ),
        )
        if args.profile_steps:
            with peft_input_casts(casts):
                profile = profile_steps(method, cache, args, device, data, work, compile=mode)
            record("finetune_profile", dict(**arm, **profile))


if __name__ == "__main__":
    main()
