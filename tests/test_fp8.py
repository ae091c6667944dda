"""FP8 linear layers (resurgence.generate.fp8) against an independent e4m3 quantizer and plain layers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resurgence.generate.fp8 import FP8Linear, fp8_linear, quantize_fp8, set_linear_fp8


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
