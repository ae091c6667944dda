"""The attention operator that keeps its kernel preference inside a compiled UNet (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from resurgence.generate.attention import PreferredKernelAttnProcessor, attention, use_preferred_kernel
from resurgence.models.pipeline import build_random_pipeline


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head, in float64, on (batch, tokens, heads, dim) tensors."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (w @ v).transpose(1, 2)


@pytest.mark.parametrize("backend", ["default", "math", "flash", "efficient", "cudnn"])
def test_operator_matches_softmax_attention_forward_and_backward(backend):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 7, 3, 8, generator=g, requires_grad=True)
    k = torch.randn(2, 5, 3, 8, generator=g, requires_grad=True)
    v = torch.randn(2, 5, 3, 6, generator=g, requires_grad=True)
    out = attention(q, k, v, backend)
    ref = _reference(q, k, v)
    assert out.shape == (2, 7, 3, 6) and out.is_contiguous()
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    cot = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad(out, (q, k, v), cot)
    want = torch.autograd.grad(ref, (q, k, v), cot.double())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_operator_stays_opaque_to_torch_compile():
    """The compiled graph holds the operator, not scaled_dot_product_attention (whose kernel the
    compiler would fix at trace time), and computes the same values."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    attn = Attention(query_dim=16, heads=2, dim_head=8)
    attn.set_processor(PreferredKernelAttnProcessor("math"))
    x = torch.randn(2, 9, 16)
    compiled = torch.compile(attn, backend=capture, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), attn(x))
    targets = {str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"}
    assert any("resurgence.attention" in t for t in targets), targets
    assert not any("scaled_dot_product_attention" in t for t in targets), targets


@pytest.mark.parametrize("cross", [False, True])
def test_processor_equals_diffusers_sdpa_processor(cross):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12 if cross else None, heads=2, dim_head=8)
    x = torch.randn(3, 10, 16)
    ctx = torch.randn(3, 4, 12) if cross else None
    attn.set_processor(AttnProcessor2_0())
    want = attn(x, encoder_hidden_states=ctx)
    attn.set_processor(PreferredKernelAttnProcessor("math"))
    torch.testing.assert_close(attn(x, encoder_hidden_states=ctx), want, atol=1e-6, rtol=1e-5)


def test_other_attention_layouts_fall_back_to_diffusers():
    """The VAE's spatial attention (4-d input, group norm, residual) takes diffusers' path unchanged."""
    vae = build_random_pipeline("tiny", seed=0).vae
    z = torch.randn(1, vae.config.latent_channels, 8, 8)
    with torch.no_grad():
        want = vae.decode(z).sample
        vae.set_attn_processor(PreferredKernelAttnProcessor("math"))
        torch.testing.assert_close(vae.decode(z).sample, want)


def test_use_preferred_kernel_covers_every_unet_attention_and_rejects_unknown_backends():
    unet = build_random_pipeline("tiny", seed=0).unet
    use_preferred_kernel(unet, "cudnn")
    procs = list(unet.attn_processors.values())
    assert procs and all(isinstance(p, PreferredKernelAttnProcessor) and p.backend == "cudnn" for p in procs)
    with pytest.raises(ValueError, match="attention must be one of"):
        PreferredKernelAttnProcessor("fast")
