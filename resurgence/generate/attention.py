"""Attention whose kernel is chosen when it runs, also inside a compiled UNet.

`torch.compile` traces ``scaled_dot_product_attention`` into its graph and picks the kernel once,
at trace time (on an H200 the compiled SD v1.4 UNet ran flash attention whatever backend was
preferred; docs/generation_speed.md). Routing the UNet's attention through a custom operator
keeps the call opaque to the compiler, so the preferred kernel (cuDNN's, 2x flash's speed on SD's
4096-token, 40-wide heads) runs inside the compiled graph too.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch.nn.attention import SDPBackend, sdpa_kernel

# scaled_dot_product_attention kernels by config name; "default" leaves the choice to PyTorch's dispatcher.
SDPA_KERNELS: dict[str, SDPBackend] = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
ATTENTION_BACKENDS = ("default", *SDPA_KERNELS)


def attention_backend(name: str):
    """Context preferring one scaled_dot_product_attention kernel ("default": PyTorch's order).

    A preference, not a pin: where the kernel cannot take a shape (cuDNN and the VAE's single
    512-wide head) the next kernel runs instead.
    """
    if name == "default":
        return contextlib.nullcontext()
    rest = [k for n, k in SDPA_KERNELS.items() if n != name]
    return sdpa_kernel([SDPA_KERNELS[name], *rest], set_priority=True)


def _sdpa_bshd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    with attention_backend(backend):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).contiguous()


@torch.library.custom_op("resurgence::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """Softmax attention of (batch, tokens, heads, head_dim) tensors with ``backend`` preferred."""
    return _sdpa_bshd(q, k, v, backend)


@attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, backend = inputs
    ctx.save_for_backward(q, k, v)
    ctx.backend = backend


def _backward(ctx, grad: torch.Tensor):
    # Recomputes the forward (as activation checkpointing does) rather than keeping the kernel's
    # softmax statistics: the operator exists for sampling speed; training through it stays correct.
    q, k, v = ctx.saved_tensors
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        grads = torch.autograd.grad(_sdpa_bshd(*leaves, ctx.backend), leaves, grad)
    return (*grads, None)


attention.register_autograd(_backward, setup_context=_setup_context)


class PreferredKernelAttnProcessor(AttnProcessor2_0):
    """diffusers' SDPA processor with the attention itself in `attention` (kernel chosen at run time).

    Only the plain transformer-block case (3-d input, no mask, no extra norms, no residual) takes
    the operator; any other use of the module falls back to `AttnProcessor2_0` unchanged.
    """

    def __init__(self, backend: str) -> None:
        super().__init__()
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {list(ATTENTION_BACKENDS)}, got {backend!r}")
        self.backend = backend

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        plain = (
            hidden_states.ndim == 3
            and attention_mask is None
            and not args
            and kwargs.get("scale") is None
            and attn.spatial_norm is None
            and attn.group_norm is None
            and attn.norm_q is None
            and attn.norm_k is None
            and not attn.norm_cross
            and not attn.residual_connection
            and attn.rescale_output_factor == 1.0
        )
        if not plain:
            return super().__call__(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        heads = attn.heads
        out = attention(
            query.unflatten(-1, (heads, -1)),
            key.unflatten(-1, (heads, -1)),
            value.unflatten(-1, (heads, -1)),
            self.backend,
        )
        out = attn.to_out[0](out.flatten(2).to(query.dtype))
        return attn.to_out[1](out)


def use_preferred_kernel(unet, backend: str) -> None:
    """Route every attention layer of ``unet`` through a `PreferredKernelAttnProcessor` (one shared object)."""
    unet.set_attn_processor(PreferredKernelAttnProcessor(backend))
