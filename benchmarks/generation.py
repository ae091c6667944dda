"""Generation throughput (images/s, TFLOP/s achieved, peak memory) of a Stable-Diffusion-architecture pipeline.

Weights do not change the cost, so random weights of the architecture are used unless a
pipeline folder is given. FLOPs are counted once with `torch.utils.flop_counter` (one UNet
forward and one VAE decode at batch 1): per image, ``steps * (2 if guided) * unet + vae``.
``--reference N`` also generates N images with the plain fp32 pipeline (same scheduler, same
seeds) and reports the per-image pixel difference of the configuration under test.
``--baseline`` first times, in the same process, what any user can write in two lines: the plain
diffusers pipeline in the same dtype with ``pipe.unet = torch.compile(pipe.unet)`` and nothing else
(same weights, scheduler, prompts and initial latents); it gets a row of its own
(``generation_baseline``, never priced by paper_cost.py) and the engine's row its rate and the ratio.
Appends a row to benchmarks/results.jsonl naming the machine.

    python benchmarks/generation.py --arch sd14 --dtype bfloat16 --batch 32 --steps 50 --guidance 7.5 \\
        --channels-last --compile max-autotune-no-cudagraphs --images 128 --reference 4
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch
from common import (  # benchmarks/ is on sys.path when run as a script
    fast_cuda_math,
    gpu_lock,
    inductor_settings,
    record,
)
from torch.utils.flop_counter import FlopCounterMode

from resurgence.generate import COMPILE_MODES
from resurgence.generate.engine import (
    ATTENTION_BACKENDS,
    GenerationConfig,
    generate,
    initial_latents,
    resolve_dtype,
)
from resurgence.generate.fp8 import GRANULARITIES
from resurgence.models.pipeline import ARCHITECTURES, build_random_pipeline, load_pipeline, make_scheduler


@torch.no_grad()
def flops_per_image(pipe, steps: int, guided: bool, device: str, dtype: torch.dtype) -> dict[str, float]:
    """Counted FLOPs of one UNet forward and one VAE decode (batch 1), and per generated image."""
    res = pipe.unet.config.sample_size
    z = torch.randn(1, pipe.unet.config.in_channels, res, res, device=device, dtype=dtype)
    ctx = torch.randn(
        1, pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim, device=device, dtype=dtype
    )
    with FlopCounterMode(display=False) as fc:
        pipe.unet(z, torch.tensor([500], device=device), encoder_hidden_states=ctx)
    unet = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        pipe.vae.decode(z)
    vae = fc.get_total_flops()
    return dict(
        unet_tflop=unet / 1e12,
        vae_tflop=vae / 1e12,
        per_image_tflop=(steps * (2 if guided else 1) * unet + vae) / 1e12,
    )


def _time_vae_decode(pipe, cuda: bool) -> list[float]:
    """Wrap ``pipe.vae.decode`` to add its seconds (synchronised) to the returned one-element list."""
    total = [0.0]
    decode = pipe.vae.decode

    def timed(*args, **kwargs):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = decode(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        total[0] += time.perf_counter() - t0
        return out

    pipe.vae.decode = timed
    return total


def _timed(run, cuda: bool) -> float:
    """Seconds of ``run()``, the GPU drained before and after (peak memory counted from the start)."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) for im in images])


def _difference(images, ref_pixels: np.ndarray) -> dict:
    """Per-image pixel difference of ``images`` from the fp32 reference's first images."""
    n = min(len(images), len(ref_pixels))
    got = _pixels(images[:n])
    err = np.abs(got - ref_pixels[:n]) / 255.0
    mse = ((got - ref_pixels[:n]) / 255.0) ** 2
    per_image = err.mean(axis=(1, 2, 3))
    return dict(
        images=n,
        mean_abs=round(float(err.mean()), 5),
        max_per_image_mean_abs=round(float(per_image.max()), 5),
        frac_images_over_2_255=round(float((per_image > 2 / 255).mean()), 4),
        psnr_db=round(float(10 * np.log10(1.0 / max(mse.mean(), 1e-12))), 2),
        reference="fp32, no levers, same scheduler and seeds",
    )


def sampling_fields(args) -> dict:
    """What both rows were sampled with: model, device, dtype, batch, steps, guidance."""
    return dict(
        arch=args.pipeline or args.arch,
        device=args.device,
        dtype=args.dtype,
        batch=args.batch,
        steps=args.steps,
        guidance=args.guidance,
    )


@torch.no_grad()
def plain_compiled_generate(pipe, prompts: list[str], seeds: list[int], cfg: GenerationConfig, device: str):
    """The baseline: ``pipe`` called as diffusers documents it, batch by batch, from the engine's initial
    latents (so both draw the same images up to numerics), with the engine's scheduler and guidance."""
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    dtype = pipe.unet.dtype
    images = []
    for start in range(0, len(prompts), cfg.batch_size):
        bs = seeds[start : start + cfg.batch_size]
        latents = initial_latents(pipe, bs, native, native).to(device=device, dtype=dtype)
        out = pipe(
            prompt=prompts[start : start + cfg.batch_size],
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            latents=latents,
            output_type="pil",
        )
        images.extend(out.images)
    return images


def time_baseline(args, cfg: GenerationConfig, prompts: list[str], ref_pixels, cuda: bool) -> dict:
    """Build the plain pipeline (same weights), compile its UNet, warm up one batch, time ``args.images``."""
    pipe = load_pipeline(args.pipeline) if args.pipeline else build_random_pipeline(args.arch)
    pipe.scheduler = make_scheduler(cfg.scheduler, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    pipe.to(args.device, resolve_dtype(args.dtype, args.device))
    pipe.unet = torch.compile(pipe.unet)
    t0 = time.perf_counter()
    warm = plain_compiled_generate(pipe, prompts[: args.batch], list(range(args.batch)), cfg, args.device)
    warmup_s = time.perf_counter() - t0
    run = partial(
        plain_compiled_generate, pipe, prompts[: args.images], list(range(args.images)), cfg, args.device
    )
    elapsed = _timed(run, cuda)
    row = dict(
        **sampling_fields(args),
        compile="default",
        images=args.images,
        seconds=round(elapsed, 3),
        warmup_s=round(warmup_s, 1),
        images_per_s=round(args.images / elapsed, 3),
        peak_gpu_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        difference_from_reference=_difference(warm, ref_pixels) if ref_pixels is not None else None,
        label="plain StableDiffusionPipeline, pipe.unet = torch.compile(pipe.unet), nothing else",
    )
    del pipe, run
    if cuda:
        torch.cuda.empty_cache()
    return record("generation_baseline", row)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="toy", choices=sorted(ARCHITECTURES))
    p.add_argument("--pipeline", help="a saved pipeline folder instead of random weights")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", default="none", choices=COMPILE_MODES)
    p.add_argument("--attention", default="default", choices=ATTENTION_BACKENDS)
    p.add_argument(
        "--linear-fp8", default="none", choices=GRANULARITIES, help="the UNet's linear layers in FP8"
    )
    p.add_argument("--conv-fp8", default="none", choices=GRANULARITIES, help="the UNet's convolutions in FP8")
    p.add_argument("--images", type=int, default=64, help="images timed after one warm-up batch")
    p.add_argument("--reference", type=int, default=0, help="compare N images with the plain fp32 pipeline")
    p.add_argument(
        "--inductor", nargs="*", metavar="KEY=VALUE", help="torch._inductor.config settings to try"
    )
    p.add_argument("--lock", help="a lock file shared with benchmarks run side by side (unet_profile.py)")
    p.add_argument("--parties", type=int, default=1, help="how many benchmarks share --lock")
    p.add_argument("--label", default="", help="free text stored with the row")
    p.add_argument(
        "--baseline", action="store_true", help="also time the plain compiled pipeline first (module doc)"
    )
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    fast_cuda_math(args.device, autotune=not args.lock)

    pipe = load_pipeline(args.pipeline) if args.pipeline else build_random_pipeline(args.arch)
    cfg = GenerationConfig(
        steps=args.steps,
        guidance_scale=args.guidance,
        batch_size=args.batch,
        dtype=args.dtype,
        channels_last=args.channels_last,
        compile=args.compile,
        attention=args.attention,
        linear_fp8=args.linear_fp8,
        conv_fp8=args.conv_fp8,
    )
    prompts = [f"a photo of the thing number {i}" for i in range(max(args.images, args.reference))]
    ref_pixels = None
    if args.reference:
        ref_cfg = GenerationConfig(steps=args.steps, guidance_scale=args.guidance, batch_size=args.reference)
        ref = generate(
            pipe, prompts[: args.reference], list(range(args.reference)), ref_cfg, args.device, False
        )
        ref_pixels = _pixels(ref)
    baseline = time_baseline(args, cfg, prompts, ref_pixels, cuda) if args.baseline else None
    dtype = resolve_dtype(args.dtype, args.device)
    pipe.to(args.device, dtype)
    flops = flops_per_image(pipe, args.steps, args.guidance > 1, args.device, dtype)
    vae_s = _time_vae_decode(pipe, cuda)

    with inductor_settings(args.inductor):  # read when the compiled UNet traces, in the warm-up batch
        t0 = time.perf_counter()
        warm = generate(
            pipe, prompts[: args.batch], list(range(args.batch)), cfg, device=args.device, progress=False
        )
        warmup_s = time.perf_counter() - t0
        with gpu_lock(args.lock, args.parties):
            if args.lock:  # autotune the kernels alone on the GPU before timing
                generate(pipe, prompts[: args.batch], list(range(args.batch)), cfg, args.device, False)
            vae_s[0] = 0.0
            elapsed = _timed(
                lambda: generate(
                    pipe,
                    prompts[: args.images],
                    list(range(args.images)),
                    cfg,
                    device=args.device,
                    progress=False,
                ),
                cuda,
            )
    diff = _difference(warm, ref_pixels) if ref_pixels is not None else None
    ips = args.images / elapsed
    record(
        "generation",
        dict(
            **sampling_fields(args),
            channels_last=args.channels_last,
            compile=args.compile,
            attention=args.attention,
            linear_fp8=args.linear_fp8,
            conv_fp8=args.conv_fp8,
            inductor=args.inductor or None,
            images=args.images,
            seconds=round(elapsed, 3),
            warmup_s=round(warmup_s, 1),
            images_per_s=round(ips, 3),
            vae_decode_share=round(vae_s[0] / elapsed, 4),
            tflop_per_image=round(flops["per_image_tflop"], 3),
            unet_tflop_per_forward=round(flops["unet_tflop"], 4),
            vae_decode_tflop=round(flops["vae_tflop"], 4),
            achieved_tflop_s=round(ips * flops["per_image_tflop"], 1),
            peak_gpu_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
            difference_from_reference=diff,
            baseline_images_per_s=baseline["images_per_s"] if baseline else None,
            speedup_vs_baseline=round(ips / baseline["images_per_s"], 3) if baseline else None,
            label=args.label,
        ),
    )


if __name__ == "__main__":
    main()
