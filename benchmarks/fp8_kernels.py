"""SD v1.4's UNet layer by layer in bf16 and in FP8 (e4m3): which layers FP8 makes faster (issue 22).

For each distinct convolution and linear shape of one guided UNet forward (batch 2 x --batch at the UNet's
native size), this times on the GPU, back to back after a warm-up:
- the bf16 layer as the compiled UNet runs it (cuDNN's channels-last convolution, autotuned; cuBLAS's matmul);
- the same layer in FP8 from already quantized operands: convolutions through ``resurgence::scaled_conv2d``
  (one cuDNN graph: FP8 convolution, scales, bias; `resurgence.generate.scaled_conv`), linear layers through
  ``torch._scaled_mm`` with per-row scales;
- the quantization of the layer's input (compiled, as inductor would fuse it): the cost FP8 adds;
- for each distinct convolution input, the GroupNorm + SiLU that produces it in a ResNet block, compiled
  alone, with the quantization fused after it (a scale from the tensor's own maximum, as `fp8_conv2d` does),
  and with a fixed scale (a pointwise cast inductor can fold into the normalisation's kernel): what the
  quantization costs inside the compiled graph;
and the FP8 output's relative difference from the bf16 one. Weighted by how often each shape runs, the row
projects a forward's convolution and matmul time in both precisions. Appends one row to
benchmarks/results.jsonl.

    python benchmarks/fp8_kernels.py --arch sd14 --batch 32
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
import torch.nn.functional as F
from common import fast_cuda_math, record  # benchmarks/ is on sys.path when run as a script
from torch import nn

from resurgence.generate.fp8 import FP8_DTYPE, fp8_conv_eligible, fp8_eligible, quantize_fp8
from resurgence.generate.scaled_conv import conv_output_shape
from resurgence.models.pipeline import ARCHITECTURES, build_random_pipeline


def gpu_ms(fn, repeats: int) -> float:
    """Milliseconds per call of ``fn`` over ``repeats`` back-to-back calls (CUDA events), after 3 warm-ups."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def failure(e: Exception) -> str:
    """What a row records for a shape a kernel refused: a finding, not the end of the run."""
    return f"{type(e).__name__}: {e}"[:300]


def time_fp8(row: dict, fp8, plain, quantize, x: torch.Tensor, repeats: int, also=None) -> dict:
    """Add to ``row`` the FP8 layer's milliseconds (and those of the callables in ``also``, by name), its
    input quantization's, and its output's relative difference from the bf16 layer's; or the failure."""
    try:
        row["fp8_ms"] = gpu_ms(fp8, repeats)
        for name, fn in (also or {}).items():
            row[name] = gpu_ms(fn, repeats)
        row["quantize_ms"] = gpu_ms(lambda: quantize(x), repeats)
        row["fp8_vs_bf16_difference"] = relative_difference(fp8(), plain())
    except Exception as e:  # noqa: BLE001 - a shape the FP8 kernel refuses is a finding
        row["fp8"] = failure(e)
    return row


def layer_shapes(unet: nn.Module, n: int) -> tuple[Counter, Counter, dict]:
    """Counts of (layer kind, input shape, layer key) over one forward of batch ``n``, and a layer per key."""
    convs: Counter = Counter()
    linears: Counter = Counter()
    layers: dict = {}

    def hook(layer, inputs, _output):
        x = inputs[0]
        if isinstance(layer, nn.Conv2d):
            key = (tuple(x.shape), tuple(layer.weight.shape), layer.stride, layer.padding)
            convs[key] += 1
        else:
            key = (x.numel() // x.shape[-1], layer.in_features, layer.out_features)
            linears[key] += 1
        layers.setdefault(key, layer)

    handles = [m.register_forward_hook(hook) for m in unet.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    cfg = unet.config
    z = torch.randn(n, cfg.in_channels, cfg.sample_size, cfg.sample_size, device="cuda", dtype=torch.bfloat16)
    ctx = torch.randn(n, 77, cfg.cross_attention_dim, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        unet(z.to(memory_format=torch.channels_last), torch.full((n,), 500, device="cuda"), ctx)
    for h in handles:
        h.remove()
    return convs, linears, layers


def producer_costs(x_shape, repeats: int) -> dict:
    """Milliseconds of GroupNorm(32) + SiLU on an ``x_shape`` input, compiled: writing bf16, writing e4m3
    with a scale from the output's maximum, and writing e4m3 with a fixed scale."""
    h = torch.randn(x_shape, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    gamma = torch.ones(x_shape[1], device="cuda", dtype=torch.bfloat16)
    beta = torch.zeros_like(gamma)
    scale = torch.tensor(0.01, device="cuda")

    def norm(t):
        return F.silu(F.group_norm(t, 32, gamma, beta))

    variants = {
        "bf16": norm,
        "fp8_own_scale": lambda t: quantize_fp8(norm(t), "tensor"),
        "fp8_fixed_scale": lambda t: (norm(t).float() / scale).clamp(-448, 448).to(FP8_DTYPE),
    }
    compiled = {name: torch.compile(f, dynamic=False) for name, f in variants.items()}
    return {f"norm_silu_{name}_ms": gpu_ms(lambda f=f: f(h), repeats) for name, f in compiled.items()}


def conv_row(key, layer, count: int, repeats: int) -> dict:
    x_shape, w_shape, stride, padding = key
    x = torch.randn(x_shape, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    w, b = layer.weight, layer.bias
    row = dict(x=list(x_shape), w=list(w_shape), stride=list(stride), count=count)
    out = torch.Size(conv_output_shape(x_shape, w_shape, stride, padding))
    row["flop"] = 2 * out.numel() * torch.Size(w_shape[1:]).numel()

    def plain():
        return F.conv2d(x, w, b, stride, padding)

    row["bf16_ms"] = gpu_ms(plain, repeats)
    if not fp8_conv_eligible(layer):
        row["fp8"] = "not eligible (channels not a multiple of 16)"
        return row
    quantize = torch.compile(lambda t: quantize_fp8(t, "tensor"), dynamic=False)
    qx, sx = quantize(x)
    qw, sw = quantize_fp8(w, "row")
    sw = sw.reshape(-1)

    def fp8():
        return torch.ops.resurgence.scaled_conv2d(qx, qw, sx, sw, b, list(stride), list(padding), x.dtype)

    return time_fp8(row, fp8, plain, quantize, x, repeats)


def linear_row(key, layer, count: int, repeats: int) -> dict:
    m, k, n = key
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w, b = layer.weight, layer.bias
    row = dict(m=m, k=k, n=n, count=count, flop=2 * m * k * n)

    def plain():
        return F.linear(x, w, b)

    row["bf16_ms"] = gpu_ms(plain, repeats)
    if not fp8_eligible(layer):
        row["fp8"] = "not eligible"
        return row
    quantize = torch.compile(lambda t: quantize_fp8(t, "row"), dynamic=False)
    qx, sx = quantize(x)
    qw, sw = quantize_fp8(w, "row")

    def fp8():
        return torch._scaled_mm(qx, qw.t(), scale_a=sx, scale_b=sw.t(), bias=b, out_dtype=x.dtype)

    qx_t, sx_t = quantize_fp8(x, "tensor")
    qw_t, sw_t = quantize_fp8(w, "tensor")

    def fp8_tensor_scales():
        return torch._scaled_mm(qx_t, qw_t.t(), scale_a=sx_t, scale_b=sw_t, bias=b, out_dtype=x.dtype)

    return time_fp8(row, fp8, plain, quantize, x, repeats, {"fp8_tensor_scales_ms": fp8_tensor_scales})


def totals(rows: list[dict]) -> dict:
    """A forward's milliseconds in bf16, in FP8 (ineligible layers counted at bf16) and FP8 with quantization."""
    out = dict(bf16_ms=0.0, fp8_ms=0.0, fp8_with_quantize_ms=0.0, tflop=0.0)
    for r in rows:
        c = r["count"]
        out["bf16_ms"] += c * r["bf16_ms"]
        out["tflop"] += c * r["flop"] / 1e12
        fp8 = r.get("fp8_ms", r["bf16_ms"])
        out["fp8_ms"] += c * fp8
        out["fp8_with_quantize_ms"] += c * (fp8 + r.get("quantize_ms", 0.0))
    out["bf16_tflops"] = out["tflop"] / out["bf16_ms"] * 1e3
    out["fp8_tflops"] = out["tflop"] / out["fp8_ms"] * 1e3
    out["speedup"] = out["bf16_ms"] / out["fp8_ms"]
    out["speedup_with_quantize"] = out["bf16_ms"] / out["fp8_with_quantize_ms"]
    return {k: round(v, 4) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="sd14", choices=sorted(ARCHITECTURES))
    p.add_argument("--batch", type=int, default=32, help="images; the UNet sees twice this (guidance)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--label", default="")
    args = p.parse_args(argv)
    fast_cuda_math("cuda", autotune=True)
    unet = build_random_pipeline(args.arch).unet.to("cuda", torch.bfloat16).eval()
    unet.to(memory_format=torch.channels_last)
    convs, linears, layers = layer_shapes(unet, 2 * args.batch)
    # Each shape compiles its own quantization: past dynamo's default limit of recompiles of one function
    # the rest would run eager and unfused.
    torch._dynamo.config.recompile_limit = 1024
    with torch.no_grad():
        conv_rows = []
        for k, c in convs.items():
            conv_rows.append(conv_row(k, layers[k], c, args.repeats))
            print("conv", conv_rows[-1], flush=True)
        producers = {}
        for r in conv_rows:
            shape = tuple(r["x"])
            if r.get("fp8_ms") and shape[1] % 32 == 0 and shape not in producers:
                try:
                    producers[shape] = producer_costs(shape, args.repeats)
                except Exception as e:  # noqa: BLE001
                    producers[shape] = {"error": failure(e)}
                print("producer", shape, producers[shape], flush=True)
        linear_rows = []
        for k, c in linears.items():
            linear_rows.append(linear_row(k, layers[k], c, args.repeats))
            print("linear", linear_rows[-1], flush=True)
    record(
        "fp8_kernels",
        dict(
            label=args.label,
            arch=args.arch,
            unet_batch=2 * args.batch,
            repeats=args.repeats,
            convolutions=totals(conv_rows),
            linears=totals(linear_rows),
            convolution_shapes=conv_rows,
            linear_shapes=linear_rows,
            norm_silu_producers=[dict(x=list(k), **v) for k, v in producers.items()],
        ),
    )


if __name__ == "__main__":
    main()
