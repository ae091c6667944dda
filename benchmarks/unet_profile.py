"""Where a guided UNet step's time goes: kernel time and FLOPs by kind (convolution, matmul,
attention, the rest) and the UNet forward time under each SDPA backend.

The generation engine spends ~97% of an SD v1.4 image's FLOPs in the UNet; knowing which kind of
kernel runs far below the GPU's rate says which lever is worth building. Random weights of the
architecture (weights do not change the cost). Appends one row to benchmarks/results.jsonl.

    python benchmarks/unet_profile.py --arch sd14 --batch 32 --dtype bfloat16

Several variants can share one GPU: with ``--lock FILE --parties N`` each process compiles (cuDNN
autotuning off), waits until all N have, then autotunes, times and profiles holding the lock, so
compiles overlap and timings see no other work (tools/device/bench_sd14.sh, WHAT=variants).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict

import torch
from common import (  # benchmarks/ is on sys.path when run as a script
    fast_cuda_math,
    gpu_lock,
    inductor_settings,
    record,
)
from torch.autograd import DeviceType
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from resurgence.generate import COMPILE_MODES
from resurgence.generate.engine import SDPA_KERNELS, resolve_dtype
from resurgence.models.pipeline import ARCHITECTURES, build_random_pipeline

# The fused kernels the engine can prefer (math, the unfused reference, is not timed).
BACKENDS = {name: SDPA_KERNELS[name] for name in ("flash", "efficient", "cudnn")}


def dispatcher_choice(q_shape: tuple[int, ...], kv_tokens: int, dtype: torch.dtype) -> str:
    """The SDPA backend PyTorch's dispatcher picks, unconstrained, for (batch, heads, tokens, dim) queries."""
    q = torch.randn(q_shape, device="cuda", dtype=dtype)
    kv = torch.randn((*q_shape[:2], kv_tokens, q_shape[3]), device="cuda", dtype=dtype)
    return SDPBackend(torch._fused_sdp_choice(q, kv, kv)).name


def only(name: str):
    """Context allowing one SDPA backend; "default" leaves PyTorch's dispatcher its own choice."""
    return contextlib.nullcontext() if name == "default" else sdpa_kernel([BACKENDS[name]])


# Kernel-name fragments, checked in this order (the first match names the kind). Inductor's
# generated kernels come first: their names list the ops they fused ("triton_poi_fused_convolution_
# ..." adds a convolution's bias), so they are elementwise/normalisation work unless a template.
KINDS = (
    ("convolution", ("triton_tem_fused_convolution",)),
    ("matmul", ("triton_tem",)),
    ("fused (triton)", ("triton_",)),
    ("attention", ("flash", "fmha", "attention", "sdpa", "softmax")),
    ("convolution", ("conv", "implicit", "fprop", "dgrad", "wgrad")),
    ("matmul", ("gemm", "cutlass", "nvjet", "matmul")),
    ("convolution", ("cudnn", "sm90_xmma")),
    ("normalisation", ("norm",)),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def kernel_totals(prof, device: torch.device) -> dict[str, tuple[float, int]]:
    """(microseconds, calls) per kernel of a profile: the device's kernels on a GPU (copies left out),
    operators' own time on a CPU. On a GPU only rows that run on the device count: an operator's, a
    compiled region's or autograd's rows (``MmBackward0``, ``autograd::engine::evaluate_function: ...``)
    carry their kernels' time again, so counting them counts a backward kernel two or three times. So do
    ``record_function`` ranges drawn on the GPU's timeline (``Optimizer.step#AdamW.step``), which are CUDA rows
    but user annotations, not kernels."""
    out = {}
    for ev in prof.key_averages():
        if device.type == "cuda":
            if (
                ev.device_type != DeviceType.CUDA
                or ev.is_user_annotation
                or ev.key.startswith(("Memcpy", "Memset"))
            ):
                continue
            us = ev.self_device_time_total
            if us <= 0:
                continue
        else:
            us = ev.self_cpu_time_total
            if not ev.key.startswith("aten::"):
                continue
        out[ev.key] = (float(us), int(ev.count))
    return out


def flop_kind(op: str) -> str:
    if "convolution" in op:
        return "convolution"
    if "attention" in op:
        return "attention"
    if any(k in op for k in ("mm", "addmm", "bmm", "linear")):
        return "matmul"
    return "other"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="sd14", choices=sorted(ARCHITECTURES))
    p.add_argument("--batch", type=int, default=32, help="images; the UNet sees twice this (guidance)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--compile", default="none", choices=COMPILE_MODES, help="profile the compiled UNet")
    p.add_argument(
        "--attention",
        default="all",
        choices=("all", "default", *BACKENDS),
        help="the SDPA backends timed; a compiled UNet traces once, under the first, so name one with --compile",
    )
    p.add_argument(
        "--inductor", nargs="*", metavar="KEY=VALUE", help="torch._inductor.config settings to try"
    )
    p.add_argument("--lock", help="a lock file shared by variants run side by side (see above)")
    p.add_argument("--parties", type=int, default=1, help="how many variants share --lock")
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    backends = list(BACKENDS) if args.attention == "all" else [args.attention]
    device = "cuda"
    fast_cuda_math(device, autotune=not args.lock)
    dtype = resolve_dtype(args.dtype, device)
    unet = (
        build_random_pipeline(args.arch).unet.to(device, dtype).to(memory_format=torch.channels_last).eval()
    )
    cfg = unet.config
    n = 2 * args.batch
    z = torch.randn(n, cfg.in_channels, cfg.sample_size, cfg.sample_size, device=device, dtype=dtype)
    z = z.to(memory_format=torch.channels_last)
    ctx = torch.randn(n, 77, cfg.cross_attention_dim, device=device, dtype=dtype)
    t = torch.full((n,), 500, device=device)

    def step():
        return unet(z, t, encoder_hidden_states=ctx).sample

    with torch.no_grad(), inductor_settings(args.inductor):
        with FlopCounterMode(display=False) as fc:
            step()
        total_flops = fc.get_total_flops()
        flops_by_kind: dict[str, float] = defaultdict(float)
        for op, count in fc.get_flop_counts()["Global"].items():
            flops_by_kind[flop_kind(str(op))] += count
        if args.compile != "none":
            unet.compile(mode=args.compile)  # after counting: the counter needs the eager ops
        compile_s = None
        if args.lock:
            t0 = time.perf_counter()
            with only(backends[0]):
                step()  # compiles (if asked) without holding the GPU lock
            torch.cuda.synchronize()
            compile_s = round(time.perf_counter() - t0, 1)
        with gpu_lock(args.lock, args.parties):
            times, prof = _time_and_profile(step, backends, args.repeats)
    # SD v1.4's attention shapes: 8 heads at each resolution, self- and cross-attention (77 tokens).
    choices = {
        f"{tokens}x{dim}, {kv} keys": dispatcher_choice((n, 8, tokens, dim), kv, dtype)
        for tokens, dim in ((4096, 40), (1024, 80), (256, 160))
        for kv in (tokens, 77)
    }
    _report(args, n, total_flops, flops_by_kind, times, prof, compile_s, choices)


def _time_and_profile(step, backends, repeats):
    """Median forward time under each backend, and a kernel profile of 3 forwards under the fastest."""
    with torch.no_grad():
        times: dict[str, float | str] = {}
        for name in backends:
            try:
                with only(name):
                    for _ in range(3):
                        step()
                    torch.cuda.synchronize()
                    ts = []
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        step()
                        torch.cuda.synchronize()
                        ts.append(time.perf_counter() - t0)
                times[name] = statistics.median(ts)
            except RuntimeError as e:  # a backend that does not take these shapes
                times[name] = f"unavailable: {str(e).splitlines()[0][:120]}"
        timed = {k: v for k, v in times.items() if isinstance(v, float)}
        best = min(timed, key=timed.get)

        with only(best):
            step()
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
    return times, prof


def _report(args, n, total_flops, flops_by_kind, times, prof, compile_s, choices) -> None:
    timed = {k: v for k, v in times.items() if isinstance(v, float)}
    best = min(timed, key=timed.get)
    kernel_us: dict[str, float] = defaultdict(float)
    per_kernel: dict[str, float] = defaultdict(float)
    for key, (us, _) in kernel_totals(prof, torch.device("cuda")).items():
        kernel_us[kernel_kind(key)] += us / 3
        per_kernel[key] += us / 3
    total_us = sum(kernel_us.values())
    rows = {}
    for kind in sorted(set(kernel_us) | set(flops_by_kind)):
        s = kernel_us.get(kind, 0.0) / 1e6
        f = flops_by_kind.get(kind, 0.0)
        rows[kind] = dict(
            time_share=round(s * 1e6 / total_us, 4) if total_us else None,
            flop_share=round(f / total_flops, 4),
            tflop_s=round(f / s / 1e12, 1) if s > 0 else None,
        )
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:25]
    record(
        "unet_profile",
        dict(
            arch=args.arch,
            dtype=args.dtype,
            compile=args.compile,
            inductor=args.inductor or None,
            first_forward_s=compile_s,
            unet_batch=n,
            unet_tflop_per_forward=round(total_flops / 1e12, 3),
            forward_s_by_sdpa_backend={
                k: (round(v, 5) if isinstance(v, float) else v) for k, v in times.items()
            },
            tflop_s_by_sdpa_backend={k: round(total_flops / v / 1e12, 1) for k, v in timed.items()},
            profiled_backend=best,
            sdpa_dispatcher_choice=choices,
            kernel_time_s_per_forward=round(total_us / 1e6, 5),
            by_kind=rows,
            top_kernels=[dict(name=k[:140], kind=kernel_kind(k), ms=round(v / 1e3, 3)) for k, v in top],
            label=args.label,
        ),
    )


if __name__ == "__main__":
    main()
