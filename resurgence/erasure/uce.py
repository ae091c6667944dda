"""UCE, Unified Concept Editing (Gandikota et al., WACV 2024, arXiv 2308.14761): a closed-form edit
of every cross-attention key/value projection.

For each `to_k`/`to_v` weight W (out x in), paper Eq. 7 as the authors' maintained script computes
it (github.com/rohitgandikota/unified-concept-editing, `trainscripts/uce_sd_erase.py`):

    W' = (lamb W + s_e sum_i (W g_i) c_i^T + s_p sum_j (W p_j) p_j^T)
         (lamb I + s_e sum_i c_i c_i^T   + s_p sum_j p_j p_j^T)^-1

c_i: the text encoder's state at the last token of an erased concept's phrase, g_i: the same for its
guide (mapping) phrase, p_j: for a preserved concept. W' minimises
s_e sum ||W' c_i - W g_i||^2 + s_p sum ||W' p_j - W p_j||^2 + lamb ||W' - W||_F^2, which is MACE's
refinement objective (`resurgence.mace.refine.refine_weights`) with E_co = sqrt(s_e) C,
E_gen = sqrt(s_e) G, the prior P at weight s_p and ridge lamb: one float64 solver serves both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from resurgence.erasure.artifact import ConceptSpec, Erasure, base_linear, kv_module_names, peak_memory
from resurgence.erasure.config import UCEConfig
from resurgence.mace.refine import encode_prompts, refine_weights


def uce_weights(
    W: Sequence[torch.Tensor],
    C: torch.Tensor,
    G: torch.Tensor,
    P: torch.Tensor,
    cfg: UCEConfig,
    info: dict[str, Any] | None = None,
) -> list[torch.Tensor]:
    """Eq. 7 for every layer in ``W`` (each (out, in)): erased rows ``C`` onto the values of their guide
    rows ``G`` (paired), preserved rows ``P`` kept; float64, on W's device (see the module docstring)."""
    root = math.sqrt(cfg.erase_scale)
    return list(
        refine_weights(
            list(W), root * C, root * G, P, cfg.preserve_scale, cfg.lamb, cfg.rcond, cfg.on_singular, info
        )
    )


@torch.no_grad()
def last_token_states(pipe, texts: Sequence[str]) -> torch.Tensor:
    """(n, dim) text-encoder states at each text's last token before <eos> (the reference's
    ``attention_mask.sum() - 2``); the <bos> state for an empty text."""
    if not texts:
        return torch.zeros(0, pipe.text_encoder.config.hidden_size, device=pipe.text_encoder.device)
    tok = pipe.tokenizer
    hidden = encode_prompts(pipe, texts)
    last = [max(min(len(ids), tok.model_max_length) - 2, 0) for ids in tok(list(texts)).input_ids]
    return hidden[torch.arange(len(texts)), torch.tensor(last, device=hidden.device)]


def erase_concepts(
    pipe,
    concepts: Sequence[ConceptSpec],
    guides: Mapping[str, str],
    cfg: UCEConfig,
    device: str | torch.device,
) -> Erasure:
    """UCE on ``pipe``: every phrase of each concept (name and synonyms) is edited toward its guide
    phrase (``guides[name]``), the ``cfg.preserve`` phrases kept. ``pipe`` is not modified."""
    if not concepts:
        raise ValueError("no concepts to erase")
    missing = [c.name for c in concepts if c.name not in guides]
    if missing:
        raise ValueError(f"no guide phrase for {missing}")
    device = torch.device(device)
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pipe.to(device)
    names = kv_module_names(pipe.unet)
    base = [base_linear(pipe.unet, n).weight.detach().to(torch.float64) for n in names]
    erase_texts = [p for c in concepts for p in c.phrases]
    guide_texts = [guides[c.name] for c in concepts for _ in c.phrases]
    C = last_token_states(pipe, erase_texts).to(torch.float64)
    G = last_token_states(pipe, guide_texts).to(torch.float64)
    P = last_token_states(pipe, cfg.preserve).to(torch.float64)
    solve: dict[str, Any] = {}
    edited = uce_weights(base, C, G, P, cfg, solve)
    deltas = {n: (w1 - w0).to(torch.float32).cpu() for n, w0, w1 in zip(names, base, edited, strict=True)}
    report: dict[str, Any] = {
        "method": "uce",
        "config": cfg.to_dict(),
        "concepts": [c.name for c in concepts],
        "guides": {c.name: guides[c.name] for c in concepts},
        "modules": names,
        "n_erase_rows": len(erase_texts),
        "n_preserve_rows": len(cfg.preserve),
        "solve": solve,
        # How far the edit reaches its two aims, per layer: erased states onto the guide's values
        # (||W' C - W G|| / ||W G||; 1 before the edit when C and G differ) and preserved values kept.
        "residual_rel": {
            n: {"erase": _rel(C @ w1.T - G @ w0.T, G @ w0.T), "preserve": _rel(P @ (w1 - w0).T, P @ w0.T)}
            for n, w0, w1 in zip(names, base, edited, strict=True)
        },
        "delta_rel_norm": {
            n: float(deltas[n].norm() / w0.norm().clamp_min(1e-30)) for n, w0 in zip(names, base, strict=True)
        },
        "wall_time_s": time.perf_counter() - t0,
        "peak_memory": peak_memory(device),
    }
    return Erasure(deltas=deltas, report=report)


def _rel(diff: torch.Tensor, ref: torch.Tensor) -> float:
    return float(diff.norm() / ref.norm().clamp_min(1e-30)) if ref.numel() else 0.0
