"""MACE end to end: refinement -> per-concept LoRAs -> fusion.

`erase_concepts` never leaves the pipeline modified: it returns the change of every cross-attention
`to_k`/`to_v` weight (final - base) as an `Erasure`, which `resurgence.erasure.artifact` writes and
fuses like every method's.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from resurgence.erasure.artifact import (
    ConceptSpec,
    Erasure,
    base_linear,
    kv_module_names,
    lora_deltas,
    peak_memory,
    set_weights,
)
from resurgence.mace.config import EraseConfig
from resurgence.mace.fusion import fuse_weights
from resurgence.mace.lora import ConceptData, train_concept_loras
from resurgence.mace.refine import collect_coexisting_embeddings, collect_token_embeddings, refine_weights


@dataclass(frozen=True)
class ImageRequest:
    """``n`` images of concept ``name`` from seeds ``seed``, ``seed + 1``, ... (MACE's training data)."""

    name: str
    n: int
    seed: int


# Every concept's images and bool masks in one call, in the order asked: a source may draw them together.
ImageSource = Callable[[Sequence[ImageRequest]], list[tuple[list[Image.Image], np.ndarray]]]


def concept_requests(names: Sequence[str], cfg: EraseConfig) -> list[ImageRequest]:
    """What MACE asks its image source for: ``cfg.images_per_concept`` images of each concept, the i-th
    concept's from seed ``cfg.seed + i``."""
    return [ImageRequest(name, cfg.images_per_concept, cfg.seed + i) for i, name in enumerate(names)]


def mapping_prompts(prompts: Sequence[str], phrases: Sequence[str], mapping: str) -> list[str]:
    """Each prompt with every occurrence of a concept phrase (longest first) replaced by ``mapping``."""
    pattern = re.compile(
        r"(?<!\w)(" + "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True)) + r")(?!\w)",
        re.IGNORECASE,
    )
    out = []
    for p in prompts:
        q, n = pattern.subn(mapping, p)
        if n == 0:
            raise ValueError(f"prompt {p!r} contains none of the phrases {list(phrases)}")
        out.append(q)
    return out


def _prior_embeddings(pipe, cfg: EraseConfig) -> torch.Tensor:
    """Prior rows: preserve prompts, plus domain prompts scaled by sqrt(domain_weight) (its Gram weight)."""
    parts = [collect_token_embeddings(pipe, cfg.preserve)]
    if cfg.domain_preserve and cfg.domain_weight > 0:
        parts.append(math.sqrt(cfg.domain_weight) * collect_token_embeddings(pipe, cfg.domain_preserve))
    return torch.cat(parts)


def erase_concepts(
    pipe,
    concepts: Sequence[ConceptSpec],
    cfg: EraseConfig,
    image_source: ImageSource,
    device: str | torch.device,
    progress: bool = True,
) -> Erasure:
    """Run MACE on ``pipe`` and return the erasure; ``pipe``'s weights are restored on return.

    ``image_source(requests)`` returns, for each concept's `ImageRequest`, its images drawn by the model
    being erased and their bool masks; it is called once, for every concept, *before* any weight changes.
    """
    if not concepts:
        raise ValueError("no concepts to erase")
    names_seen = [c.name for c in concepts]
    if len(set(names_seen)) != len(names_seen):
        raise ValueError(f"duplicate concept names: {names_seen}")
    device = torch.device(device)
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pipe.to(device)
    unet = pipe.unet
    names = kv_module_names(unet)
    base = [base_linear(unet, n).weight.detach().clone() for n in names]
    report: dict[str, Any] = {
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "concepts": names_seen,
        "modules": names,
    }

    phase_s: dict[str, float] = {}
    t_phase = time.perf_counter()
    # Training data first: it must come from the unmodified model.
    data: dict[str, tuple[list[Image.Image], np.ndarray]] = {}
    if not cfg.refine_only:
        requests = concept_requests([c.name for c in concepts], cfg)
        drawn = image_source(requests)
        if len(drawn) != len(requests):
            raise ValueError(f"image_source gave {len(drawn)} concepts' images for {len(requests)} requests")
        for c, (images, masks) in zip(concepts, drawn, strict=True):
            masks = np.asarray(masks, dtype=bool)
            if len(images) != len(masks):
                raise ValueError(
                    f"image_source gave {len(images)} images but {len(masks)} masks for {c.name!r}"
                )
            data[c.name] = (list(images), masks)
            report.setdefault("mask_fraction", {})[c.name] = float(masks.mean())

    phase_s["data"] = time.perf_counter() - t_phase
    try:
        # (a) closed-form refinement of all concepts jointly.
        t_phase = time.perf_counter()
        co, gen = [], []
        for c in concepts:
            mp = mapping_prompts(c.prompts, c.phrases, cfg.mapping_for(c.name))
            e_co, e_gen = collect_coexisting_embeddings(
                pipe, c.prompts, mp, include_padding=cfg.include_padding
            )
            co.append(e_co)
            gen.append(e_gen)
        E_co, E_gen = torch.cat(co), torch.cat(gen)
        E_prior = _prior_embeddings(pipe, cfg)
        solve_info: dict[str, Any] = {}
        refined = refine_weights(
            base, E_co, E_gen, E_prior, cfg.lambda1, cfg.ridge, cfg.rcond, cfg.on_singular, solve_info
        )
        report["refine"] = {
            "solve": solve_info,
            "n_coexisting": int(E_co.shape[0]),
            "n_prior": int(E_prior.shape[0]),
            "residual_rel": {
                n: _residual(w0, w1, E_co, E_gen) for n, w0, w1 in zip(names, base, refined, strict=True)
            },
        }
        set_weights(unet, names, refined)
        phase_s["refine"] = time.perf_counter() - t_phase

        final = refined
        if not cfg.refine_only:
            t_phase = time.perf_counter()
            # (b) one LoRA per concept on the refined model.
            losses: dict[str, list[float]] = {}
            loras: dict[str, dict[str, torch.Tensor]] = {}
            items = [
                ConceptData(c.prompts, c.phrases, *data[c.name], seed=cfg.seed + i)
                for i, c in enumerate(concepts)
            ]
            per_step = cfg.lora_concepts_per_step
            for start in range(0, len(items), per_step):
                chunk = concepts[start : start + per_step]
                trained = train_concept_loras(pipe, items[start : start + per_step], cfg, device, progress)
                for c, (sd, hist) in zip(chunk, trained, strict=True):
                    loras[c.name], losses[c.name] = sd, hist
            report["lora_loss"] = losses
            phase_s["lora"] = time.perf_counter() - t_phase
            t_phase = time.perf_counter()
            # (c) closed-form fusion of the LoRAs into one set of weights.
            concept_deltas, concept_E = [], []
            for c in concepts:
                d = lora_deltas(loras[c.name])
                concept_deltas.append(
                    [
                        d.get(n, torch.zeros_like(w, dtype=torch.float64)).to(w.device)
                        for n, w in zip(names, refined, strict=True)
                    ]
                )
                concept_E.append(collect_token_embeddings(pipe, c.prompts))
            fuse_info: dict[str, Any] = {}
            final = fuse_weights(
                refined,
                concept_deltas,
                concept_E,
                E_prior,
                cfg.fusion_lambda,
                cfg.ridge,
                base,
                cfg.rcond,
                cfg.on_singular,
                fuse_info,
            )
            report["fusion"] = {"solve": fuse_info, "n_tokens": [int(E.shape[0]) for E in concept_E]}
            phase_s["fusion"] = time.perf_counter() - t_phase
        else:
            loras = {}
            report["lora_loss"] = {}
        deltas = {
            n: (w1.to(torch.float64) - w0.to(torch.float64)).to(torch.float32).cpu()
            for n, w0, w1 in zip(names, base, final, strict=True)
        }
    finally:
        set_weights(unet, names, base)

    report["delta_rel_norm"] = {
        n: float(deltas[n].norm() / w.float().cpu().norm().clamp_min(1e-30))
        for n, w in zip(names, base, strict=True)
    }
    report["wall_time_s"] = time.perf_counter() - t0
    report["phase_s"] = phase_s
    report["peak_memory"] = peak_memory(device)
    return Erasure(deltas=deltas, concept_loras=loras, report=report)


def _residual(
    w0: torch.Tensor, w1: torch.Tensor, E_co: torch.Tensor, E_gen: torch.Tensor
) -> dict[str, float]:
    """||W E_co - W0 E_gen|| / ||W0 E_gen|| before (W=W0) and after (W=W') refinement."""
    a = w0.to(torch.float64)
    c, g = E_co.to(a.device, torch.float64), E_gen.to(a.device, torch.float64)
    target = g @ a.T
    scale = float(target.norm().clamp_min(1e-30))
    return {
        "before": float((c @ a.T - target).norm()) / scale,
        "after": float((c @ w1.to(torch.float64).T - target).norm()) / scale,
    }
