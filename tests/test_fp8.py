"""FP8 linear layers and convolutions (resurgence.generate.fp8, .scaled_conv) against an independent e4m3
quantizer, an independent convolution and plain layers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resurgence.generate.fp8 import (
    FP8Conv2d,
    FP8Linear,
    fp8_conv2d,
    fp8_linear,
    quantize_fp8,
    set_conv_fp8,
    set_linear_fp8,
)
from resurgence.generate.scaled_conv import conv_output_shape


def e4m3_round(v: np.ndarray) -> np.ndarray:
    """Round to the nearest e4m3 value (3 mantissa bits, smallest normal 2^-6, ties to even), in numpy."""
    mag = np.abs(v)
    exponent = np.floor(np.log2(np.where(mag > 0, mag, 1.0)))
    quantum = 2.0 ** (np.maximum(exponent, -6) - 3)  # below 2^-6 the spacing stays 2^-9 (subnormals)
    return np.sign(v) * np.round(mag / quantum) * quantum  # np.round rounds halves to even


def reference_linear(x: np.ndarray, w: np.ndarray, b: np.ndarray, per_row: bool) -> np.ndarray:
    """The FP8 product computed independently: numpy scales and rounding, float64 product."""
    axis = {"axis": 1, "keepdims": True} if per_row else {}
    sx = np.abs(x).max(**axis) / 448.0
    sw = np.abs(w).max(**axis) / 448.0
    xq = e4m3_round(x / sx) * sx
    wq = e4m3_round(w / sw) * sw
    return xq @ wq.T + b


@pytest.mark.parametrize("granularity", ["tensor", "row"])
def test_fp8_linear_matches_an_independent_quantized_product(granularity):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 64, generator=g).bfloat16()
    w = (torch.randn(32, 64, generator=g) / 8).bfloat16()
    b = torch.randn(32, generator=g).bfloat16()
    y = fp8_linear(x, w, b, granularity)
    assert y.dtype == torch.bfloat16 and y.shape == (3, 20, 32)
    ref = reference_linear(
        x.reshape(-1, 64).double().numpy(), w.double().numpy(), b.double().numpy(), granularity == "row"
    ).reshape(3, 20, 32)
    # Only the bf16 output's rounding (2^-8 relative) and float32 accumulation separate the two.
    np.testing.assert_allclose(y.double().numpy(), ref, rtol=2**-7, atol=2**-7 * np.abs(ref).max())


def test_fp8_error_is_e4m3_sized_and_per_row_scales_survive_an_outlier_token():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 128, generator=g).bfloat16()
    w = (torch.randn(64, 128, generator=g) / 10).bfloat16()
    exact = F.linear(x.double(), w.double())
    for granularity in ("tensor", "row"):
        err = (fp8_linear(x, w, None, granularity).double() - exact).norm() / exact.norm()
        assert 0.005 < err < 0.06  # three mantissa bits: a few percent, not exact, not garbage
    # One token 10^5 times larger: a single scale pushes every other token into e4m3's subnormals.
    x[0] *= 1e5
    exact = F.linear(x.double(), w.double())[1:]
    errors = {
        gr: ((fp8_linear(x, w, None, gr).double()[1:] - exact).norm() / exact.norm()).item()
        for gr in ("tensor", "row")
    }
    assert errors["row"] < 0.06 < errors["tensor"]


def test_quantize_fp8_scales_map_the_largest_magnitude_to_the_format_maximum():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [300.0, 1.0, -4.0]])
    q, s = quantize_fp8(x, "row")
    assert s.shape == (3, 1)
    assert q.float().abs().amax(dim=1).tolist() == [448.0, 0.0, 448.0]
    q, s = quantize_fp8(x, "tensor")
    assert s.shape == () and q.float().abs().max().item() == 448.0
    with pytest.raises(ValueError, match="granularity"):
        quantize_fp8(x, "column")


def test_set_linear_fp8_swaps_eligible_layers_in_place_and_back():
    net = nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 10), nn.Linear(10, 16)).bfloat16()
    params = {n: p for n, p in net.named_parameters()}
    keys = list(net.state_dict())
    assert set_linear_fp8(net, "row") == 1  # 48 -> 10 and 10 -> 16 are not 16-aligned
    assert type(net[0]) is FP8Linear and type(net[2]) is nn.Linear and type(net[3]) is nn.Linear
    assert list(net.state_dict()) == keys
    assert all(p is params[n] for n, p in net.named_parameters())
    x = torch.randn(5, 32).bfloat16()
    layer = net[0]

    def rel_error(y: torch.Tensor) -> float:
        exact = F.linear(x.double(), layer.weight.double(), layer.bias.double())
        return ((y.double() - exact).norm() / exact.norm()).item()

    with torch.no_grad():
        before = layer(x)
        assert 0 < rel_error(before) < 0.06
        layer.weight.mul_(-2)  # an edit after the swap is what runs: nothing is cached
        after = layer(x)
        assert 0 < rel_error(after) < 0.06 and rel_error(before) > 1
    # Under autograd, and for float32 inputs, the layer is the plain one.
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.float()
    with torch.no_grad():
        assert torch.equal(layer(x.float()), F.linear(x.float(), layer.weight, layer.bias))
    net.bfloat16()
    assert set_linear_fp8(net, "none") == 0
    assert type(net[0]) is nn.Linear and "granularity" not in net[0].__dict__
    with pytest.raises(ValueError, match="linear_fp8"):
        set_linear_fp8(net, "block")


def reference_conv(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int, per_row: bool
) -> np.ndarray:
    """The FP8 convolution computed independently: numpy e4m3 rounding (input per tensor, weight per output
    channel or per tensor) and a float64 convolution as a sum over the kernel's taps."""
    sx = np.abs(x).max() / 448.0
    sw = np.abs(w).max(axis=(1, 2, 3), keepdims=True) / 448.0 if per_row else np.abs(w).max() / 448.0
    xq = e4m3_round(x / sx) * sx
    wq = e4m3_round(w / sw) * sw
    n, _, h, wd = x.shape
    k, _, r, s = w.shape
    xp = np.pad(xq, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - r) // stride + 1, (wd + 2 * pad - s) // stride + 1
    y = np.zeros((n, k, ho, wo))
    for i in range(r):
        for j in range(s):
            patch = xp[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]  # (n, c, ho, wo)
            y += np.einsum("nchw,kc->nkhw", patch, wq[:, :, i, j])
    return y + b.reshape(1, k, 1, 1)


@pytest.mark.parametrize("granularity, stride", [("row", 1), ("tensor", 2)])
def test_fp8_conv2d_matches_an_independent_quantized_convolution(granularity, stride):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 32, 9, 9, generator=g).bfloat16().to(memory_format=torch.channels_last)
    w = (torch.randn(48, 32, 3, 3, generator=g) / 10).bfloat16()
    b = torch.randn(48, generator=g).bfloat16()
    y = fp8_conv2d(x, w, b, (stride, stride), (1, 1), granularity)
    assert y.dtype == torch.bfloat16 and list(y.shape) == conv_output_shape(
        x.shape, w.shape, [stride] * 2, [1, 1]
    )
    assert y.is_contiguous(memory_format=torch.channels_last)  # as the UNet's convolutions write
    ref = reference_conv(
        x.double().numpy(), w.double().numpy(), b.double().numpy(), stride, 1, granularity == "row"
    )
    # Only the bf16 output's rounding and float32 accumulation separate the two.
    np.testing.assert_allclose(y.double().numpy(), ref, rtol=2**-7, atol=2**-7 * np.abs(ref).max())
    exact = F.conv2d(x.double(), w.double(), b.double(), stride=stride, padding=1)
    assert 0.005 < ((y.double() - exact).norm() / exact.norm()).item() < 0.06  # e4m3-sized, not exact


def test_per_channel_weight_scales_keep_a_small_output_channel():
    """One output channel's kernel 10^5 times smaller than the rest: one weight scale rounds it to e4m3's
    subnormals or zero; a scale per output channel keeps it."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 6, 6, generator=g).bfloat16()
    w = torch.randn(16, 16, 3, 3, generator=g).bfloat16()
    w[0] *= 1e-5
    exact = F.conv2d(x.double(), w.double(), padding=1)[:, 0]
    errors = {
        gr: ((fp8_conv2d(x, w, None, (1, 1), (1, 1), gr).double()[:, 0] - exact).norm() / exact.norm()).item()
        for gr in ("tensor", "row")
    }
    assert errors["row"] < 0.06 < errors["tensor"]


def test_set_conv_fp8_swaps_eligible_convolutions_and_compiles():
    net = nn.Sequential(
        nn.Conv2d(4, 32, 3, padding=1),  # 4 input channels: not 16-aligned
        nn.SiLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=2),  # grouped: not eligible
        nn.Conv2d(32, 48, 3, stride=2, padding=1),
        nn.Conv2d(48, 16, 1),
    ).bfloat16()
    params = {n: p for n, p in net.named_parameters()}
    assert set_conv_fp8(net, "row") == 2
    assert [type(m) for m in net] == [nn.Conv2d, nn.SiLU, nn.Conv2d, FP8Conv2d, FP8Conv2d]
    assert all(p is params[n] for n, p in net.named_parameters())
    x = torch.randn(2, 4, 8, 8).bfloat16().to(memory_format=torch.channels_last)
    with torch.no_grad():
        eager = net(x)
        # torch.compile traces through the operator by its shape function (register_fake) and runs the kernel
        compiled = torch.compile(net, backend="aot_eager")(x)
        y3 = net[3](net[2](net[1](net[0](x))))
        assert torch.equal(
            y3, fp8_conv2d(net[2](net[1](net[0](x))), net[3].weight, net[3].bias, (2, 2), (1, 1), "row")
        )
    assert torch.equal(eager, compiled)
    # Under autograd the layer is the plain convolution, and gradients reach its weight.
    net[3](torch.randn(1, 32, 4, 4).bfloat16()).sum().backward()
    assert net[3].weight.grad is not None
    assert (
        set_conv_fp8(net, "none") == 0 and type(net[3]) is nn.Conv2d and "granularity" not in net[3].__dict__
    )
    with pytest.raises(ValueError, match="conv_fp8 must be one of"):
        set_conv_fp8(net, "block")


@pytest.mark.gpu
def test_cudnn_fp8_convolution_matches_the_reference_kernel():
    """The cuDNN graph (needs the fp8 extra and a Hopper GPU) against the operator's CPU kernel on the same
    e4m3 operands: both accumulate the same products in float32, so only summation order and bf16 output
    rounding may differ."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs a CUDA device with FP8 (sm89+)")
    pytest.importorskip("cudnn")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 64, 16, 16, generator=g).bfloat16().to(memory_format=torch.channels_last)
    w = (torch.randn(128, 64, 3, 3, generator=g) / 10).bfloat16()
    b = torch.randn(128, generator=g).bfloat16()
    for stride in (1, 2):
        cpu = fp8_conv2d(x, w, b, (stride, stride), (1, 1), "row")
        gpu = fp8_conv2d(x.cuda(), w.cuda(), b.cuda(), (stride, stride), (1, 1), "row").cpu()
        torch.testing.assert_close(
            gpu.float(), cpu.float(), rtol=2**-7, atol=2**-7 * cpu.float().abs().max().item()
        )
