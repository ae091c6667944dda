"""FP8 (e4m3) matrix products for the UNet's linear layers at generation time (issue 22).

A linear layer computes ``y = (q(x) s_x) (q(W) s_W)^T + b``, where ``q`` casts to ``float8_e4m3fn`` after
dividing by a scale that maps the block's largest magnitude to e4m3's largest finite value (448): one
scale for the whole tensor, or one per row (per token of ``x``, per output channel of ``W``, the form that
keeps an outlier token or channel from flattening the rest). ``torch._scaled_mm`` multiplies the FP8
operands with float32 accumulation and applies both scales, in core PyTorch on CUDA (sm89+) and CPU.

The weight is quantized again at every forward from the layer's own weight: nothing is cached, so a
weight edit (MACE, a fused LoRA, a fine-tuned checkpoint) is always what runs, and parameters, names and
state dicts are those of ``nn.Linear``. Under autograd (fine-tuning, MACE's LoRA stage, ESD) the layer is
the plain linear layer, and for inputs other than bfloat16: FP8 is a bf16 sampling setting.

Convolutions (55 % of SD v1.4's FLOPs) have their own setting: `FP8Conv2d` runs ``resurgence::scaled_conv2d``
(`resurgence.generate.scaled_conv`, cuDNN's FP8 convolution on a GPU). Its input has one scale for the
whole tensor: a convolution sums over neighbouring pixels and all input channels, so no per-pixel or
per-channel input scale can be taken out of the sum. Its weight has one scale per output channel ("row")
or one in all ("tensor").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resurgence.generate import scaled_conv  # noqa: F401 - registers torch.ops.resurgence.scaled_conv2d

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)
# "none": plain linear layers; "tensor": one scale per operand; "row": a scale per row of each operand.
GRANULARITIES = ("none", "tensor", "row")
# FP8 GEMMs take inner and output dimensions in multiples of 16; other layers stay plain.
FP8_ALIGNMENT = 16
# An all-zero row still needs a finite scale (its values quantize to zero whatever the scale).
_AMAX_FLOOR = 1e-12


def check_granularity(granularity: str, key: str = "linear_fp8") -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"{key} must be one of {list(GRANULARITIES)}, got {granularity!r}")


def quantize_fp8(x: torch.Tensor, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A tensor as e4m3 values and float32 scales with ``x ~= q.float() * scale``.

    The scale is ``amax / 448`` over each row ("row": each slice along the first dimension, shape
    ``(rows, 1, ...)``) or over the tensor ("tensor", a 0-d tensor), so the largest magnitude lands on
    e4m3's largest finite value and nothing saturates.
    """
    if granularity not in ("tensor", "row"):
        raise ValueError(f"granularity must be 'tensor' or 'row', got {granularity!r}")
    xf = x.float()
    rest = tuple(range(1, x.dim()))
    amax = xf.abs().amax(dim=rest, keepdim=True) if granularity == "row" else xf.abs().amax()
    scale = amax.clamp(min=_AMAX_FLOOR) / FP8_MAX
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def fp8_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, granularity: str
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with both operands in e4m3 (module doc); the result has ``x``'s dtype."""
    lead, k = x.shape[:-1], x.shape[-1]
    qx, sx = quantize_fp8(x.reshape(-1, k), granularity)
    qw, sw = quantize_fp8(weight, granularity)
    # _scaled_mm takes the second operand column-major (the transpose of a row-major weight) and its
    # per-row scales as one row, (1, out_features).
    y = torch._scaled_mm(
        qx, qw.t(), scale_a=sx, scale_b=sw.t() if granularity == "row" else sw, out_dtype=x.dtype
    )
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*lead, weight.shape[0])


class FP8Linear(nn.Linear):
    """``nn.Linear`` whose bf16 forward without autograd runs as `fp8_linear` (module doc)."""

    granularity: str = "row"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.bfloat16:
            return F.linear(x, self.weight, self.bias)
        return fp8_linear(x, self.weight, self.bias, self.granularity)


def fp8_eligible(layer: nn.Module) -> bool:
    """A plain linear layer (not a LoRA wrapper or a subclass) with FP8-aligned dimensions."""
    return (
        type(layer) in (nn.Linear, FP8Linear)
        and layer.in_features % FP8_ALIGNMENT == 0
        and layer.out_features % FP8_ALIGNMENT == 0
    )


def _swap_classes(module: nn.Module, granularity: str, key: str, eligible, plain: type, fp8: type) -> int:
    """Make every ``eligible`` layer under ``module`` an ``fp8`` layer of ``granularity`` ("none": ``plain``
    again), in place; returns how many layers now run in FP8. Layers change class, not identity:
    parameters, hooks, names and state dict stay as they were."""
    check_granularity(granularity, key)
    count = 0
    for layer in module.modules():
        if not eligible(layer):
            continue
        if granularity == "none":
            layer.__class__ = plain
            layer.__dict__.pop("granularity", None)
        else:
            layer.__class__ = fp8
            layer.granularity = granularity
            count += 1
    return count


def set_linear_fp8(module: nn.Module, granularity: str) -> int:
    """Make every eligible linear layer under ``module`` an `FP8Linear` of ``granularity`` ("none": plain
    ``nn.Linear`` again), in place; returns how many layers now run in FP8."""
    return _swap_classes(module, granularity, "linear_fp8", fp8_eligible, nn.Linear, FP8Linear)


def fp8_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    granularity: str,
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` with both operands in e4m3 (module doc), in x's dtype."""
    qx, sx = quantize_fp8(x, "tensor")
    qw, sw = quantize_fp8(weight, granularity)
    return torch.ops.resurgence.scaled_conv2d(
        qx, qw, sx, sw.reshape(-1), bias, list(stride), list(padding), x.dtype
    )


class FP8Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose bf16 forward without autograd runs as `fp8_conv2d` (module doc)."""

    granularity: str = "row"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.bfloat16:
            return super().forward(x)
        return fp8_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.granularity)


def fp8_conv_eligible(layer: nn.Module) -> bool:
    """A plain 2-D convolution (no groups, dilation or padding mode) with FP8-aligned channel counts."""
    return (
        type(layer) in (nn.Conv2d, FP8Conv2d)
        and layer.groups == 1
        and layer.dilation == (1, 1)
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
        and layer.in_channels % FP8_ALIGNMENT == 0
        and layer.out_channels % FP8_ALIGNMENT == 0
    )


def set_conv_fp8(module: nn.Module, granularity: str) -> int:
    """Make every eligible convolution under ``module`` an `FP8Conv2d` of ``granularity`` ("none": plain
    ``nn.Conv2d`` again), in place; returns how many now run in FP8."""
    return _swap_classes(module, granularity, "conv_fp8", fp8_conv_eligible, nn.Conv2d, FP8Conv2d)
