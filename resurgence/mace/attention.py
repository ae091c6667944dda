"""Cross-attention probes and MACE's attention loss.

MACE's stage 2 trains a LoRA so that, inside the concept's segmentation mask, the image patches stop
attending to the concept's tokens. The loss (reference `AttnController.loss`) is, summed over every
cross-attention layer, the Frobenius norm of the attention probabilities restricted to
(heads) x (mask pixels, mask resized to the layer's resolution by nearest) x (concept tokens).
Concept tokens are the concept phrase's tokens plus, with `use_pooler`, every <eos> position,
which with CLIP's tokenizer (pad = <eos>) includes the padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from resurgence.erasure.artifact import cross_attention_names


def find_phrase_positions(ids: Sequence[int], phrase_ids: Sequence[int]) -> list[int]:
    """Every position covered by an occurrence of ``phrase_ids`` inside ``ids``."""
    ids, phrase_ids = list(ids), list(phrase_ids)
    n = len(phrase_ids)
    hits: list[int] = []
    if n == 0:
        return hits
    for i in range(len(ids) - n + 1):
        if ids[i : i + n] == phrase_ids:
            hits.extend(range(i, i + n))
    return sorted(set(hits))


def concept_token_mask(
    tokenizer, prompts: Sequence[str], phrases: Sequence[str], use_pooler: bool = True
) -> torch.Tensor:
    """(B, max_len) bool: the positions whose attention MACE's loss suppresses.

    Raises if a prompt contains none of ``phrases`` (a silent empty mask would train nothing).
    """
    L = tokenizer.model_max_length
    ids = tokenizer(list(prompts), padding="max_length", max_length=L, truncation=True).input_ids
    phrase_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in phrases]
    mask = torch.zeros(len(prompts), L, dtype=torch.bool)
    for b, row in enumerate(ids):
        pos = sorted({q for pid in phrase_ids for q in find_phrase_positions(row, pid)})
        if not pos:
            raise ValueError(f"prompt {prompts[b]!r} contains none of the phrases {list(phrases)}")
        mask[b, pos] = True
        if use_pooler:
            mask[b] |= torch.tensor(row) == tokenizer.eos_token_id
    return mask


def resize_mask(spatial_mask: torch.Tensor, num_pixels: int) -> torch.Tensor:
    """(B, 1, H, W) mask -> (B, num_pixels) bool at the layer's resolution (same aspect ratio)."""
    H, W = spatial_mask.shape[-2:]
    f = math.sqrt(H * W / num_pixels)
    h, w = round(H / f), round(W / f)
    if h * w != num_pixels:
        raise ValueError(f"cannot map a {H}x{W} mask onto {num_pixels} attention pixels")
    small = F.interpolate(spatial_mask.float(), size=(h, w), mode="nearest")
    return (small > 0.5).reshape(spatial_mask.shape[0], h * w)


def masked_attention_terms(
    probs: torch.Tensor, token_mask: torch.Tensor, spatial_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For one layer: (each prompt's sum of squared selected probabilities, shape (B,); mean attention mass
    on concept tokens).

    probs: (B*heads, HW, S) as diffusers' `get_attention_scores` returns (batch-major);
    token_mask: (B, S) bool; spatial_mask: (B, 1, H, W). The mass is the concept tokens' share of
    attention averaged over heads and masked pixels (0 when the mask is empty).
    """
    B, S = token_mask.shape
    if probs.shape[0] % B or probs.shape[-1] != S:
        raise ValueError(f"attention probs {tuple(probs.shape)} do not match {B} prompts of {S} tokens")
    heads = probs.shape[0] // B
    pix = resize_mask(spatial_mask.to(probs.device), probs.shape[1])
    p = probs.reshape(B, heads, probs.shape[1], S)
    sel = pix[:, None, :, None] & token_mask.to(probs.device)[:, None, None, :]
    sq = (p.pow(2) * sel).sum(dim=(1, 2, 3))
    mass = (p * sel).sum() / (heads * pix.sum()).clamp_min(1)
    return sq, mass


@dataclass
class AttentionProbe:
    """Collects MACE loss terms from every probed cross-attention layer during one UNet call."""

    token_mask: torch.Tensor | None = None
    spatial_mask: torch.Tensor | None = None
    active: bool = True
    names: list[str] = field(default_factory=list)
    sq_sums: list[torch.Tensor] = field(default_factory=list)
    masses: list[torch.Tensor] = field(default_factory=list)

    def set_targets(self, token_mask: torch.Tensor, spatial_mask: torch.Tensor) -> None:
        if spatial_mask.ndim == 3:
            spatial_mask = spatial_mask[:, None]
        if token_mask.shape[0] != spatial_mask.shape[0]:
            raise ValueError(f"{token_mask.shape[0]} token masks but {spatial_mask.shape[0]} spatial masks")
        self.token_mask, self.spatial_mask = token_mask, spatial_mask
        self.reset()

    def record(self, name: str, probs: torch.Tensor) -> None:
        if not self.active or self.token_mask is None or self.spatial_mask is None:
            return
        sq, mass = masked_attention_terms(probs, self.token_mask, self.spatial_mask)
        self.names.append(name)
        self.sq_sums.append(sq)
        self.masses.append(mass)

    def loss(self) -> torch.Tensor:
        """MACE's loss: sum over layers of the Frobenius norm of the selected probabilities."""
        return self.group_losses(None, 1)[0]

    def group_losses(self, groups: torch.Tensor | None, n_groups: int) -> torch.Tensor:
        """MACE's loss of each group of prompts (``groups``: a group index per prompt; None: one group),
        shape (n_groups,): concepts trained side by side each get the loss they would get alone."""
        if not self.sq_sums:
            raise RuntimeError("no cross-attention layer was recorded; is the probe installed?")
        per_layer = []
        for sq in self.sq_sums:
            if groups is None:
                summed = sq.sum()[None]
            else:
                summed = sq.new_zeros(n_groups).index_add(0, groups.to(sq.device), sq)
            # clamp: zero selection (empty mask) gives 0 loss and 0 gradient instead of NaN.
            per_layer.append(summed.clamp_min(1e-30).sqrt())
        return torch.stack(per_layer).sum(0)

    def mean_mass(self) -> torch.Tensor:
        if not self.masses:
            raise RuntimeError("no cross-attention layer was recorded; is the probe installed?")
        return torch.stack(self.masses).mean()

    def reset(self) -> None:
        self.names, self.sq_sums, self.masses = [], [], []


class ProbeAttnProcessor:
    """Drop-in for diffusers' `AttnProcessor` that also hands the attention probabilities to a probe.

    Computes attention explicitly (the probabilities are needed), so it is slower than SDPA; it is
    installed only while training/measuring and then the previous processors are restored.
    """

    def __init__(self, probe: AttentionProbe, name: str) -> None:
        self.probe = probe
        self.name = name

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
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        query = attn.head_to_batch_dim(query)
        attention_probs = attn.get_attention_scores(query, key, attention_mask)
        if is_cross:
            self.probe.record(self.name, attention_probs)
        hidden_states = torch.bmm(attention_probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def probing_cross_attention(unet, probe: AttentionProbe) -> Iterator[AttentionProbe]:
    """Temporarily route every cross-attention layer through a `ProbeAttnProcessor`."""
    previous = dict(unet.attn_processors)
    cross = {f"{n}.processor" for n in cross_attention_names(unet)}
    unet.set_attn_processor(
        {
            k: ProbeAttnProcessor(probe, k[: -len(".processor")]) if k in cross else v
            for k, v in previous.items()
        }
    )
    try:
        yield probe
    finally:
        unet.set_attn_processor(previous)
