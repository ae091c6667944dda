"""MACE end to end: refinement -> per-concept LoRAs -> fusion, and the erasure as a portable LoRA.

`erase_concepts` never leaves the pipeline modified: it returns the change of every cross-attention
`to_k`/`to_v` weight (final - base). `save_erasure` writes that change as an exact diffusers LoRA
(SVD of each delta), so `apply_erasure` can fuse it into any copy of the base model and later
fine-tuning starts from plain erased weights.
"""

from __future__ import annotations

import math
import re
import resource
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from resurgence.io import read_json, save_safetensors, write_json
from resurgence.mace.attention import cross_attention_names
from resurgence.mace.config import EraseConfig
from resurgence.mace.fusion import fuse_weights
from resurgence.mace.lora import lora_deltas, train_concept_lora
from resurgence.mace.refine import collect_coexisting_embeddings, collect_token_embeddings, refine_weights
from resurgence.progress import progress_bar

LORA_FILE = "erased_lora.safetensors"
REPORT_FILE = "report.json"
ADAPTER_NAME = "mace_erasure"

ImageSource = Callable[[str, int, int], tuple[list[Image.Image], np.ndarray]]


@dataclass(frozen=True)
class ConceptSpec:
    """One concept to erase: its name, the prompts MACE trains on, and the phrases naming it."""

    name: str
    prompts: tuple[str, ...]
    phrases: tuple[str, ...] = ()  # name + synonyms; defaults to (name,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "phrases", tuple(self.phrases) or (self.name,))
        if not self.prompts:
            raise ValueError(f"concept {self.name!r} has no prompts")


@dataclass
class Erasure:
    """The result of MACE: weight deltas on the base model, the per-concept LoRAs, and a report."""

    deltas: dict[str, torch.Tensor]
    concept_loras: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def kv_module_names(unet) -> list[str]:
    """`<attn2>.to_k` and `<attn2>.to_v` for every cross-attention block, in module order."""
    return [f"{a}.{p}" for a in cross_attention_names(unet) for p in ("to_k", "to_v")]


def _linear(unet, name: str) -> torch.nn.Linear:
    m = unet.get_submodule(name)
    return getattr(m, "base_layer", m)


def kv_weights(unet, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Copies (float64, CPU) of the cross-attention key/value weights MACE edits (`kv_module_names`, or
    just ``names``)."""
    names = kv_module_names(unet) if names is None else names
    return {n: _linear(unet, n).weight.detach().to("cpu", torch.float64).clone() for n in names}


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


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "concept"


def _peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"kind": "cuda_max_memory_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    return {
        "kind": "process_max_rss",
        "bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
    }


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

    ``image_source(name, n, seed)`` returns n images of the concept drawn by the model being erased
    and their bool masks; it is called for every concept *before* any weight changes.
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
    base = [_linear(unet, n).weight.detach().clone() for n in names]
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
        for i, c in enumerate(progress_bar(concepts, desc="mace data", enabled=progress)):
            images, masks = image_source(c.name, cfg.images_per_concept, cfg.seed + i)
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
        _set_weights(unet, names, refined)
        phase_s["refine"] = time.perf_counter() - t_phase

        final = refined
        if not cfg.refine_only:
            t_phase = time.perf_counter()
            # (b) one LoRA per concept on the refined model.
            losses: dict[str, list[float]] = {}
            loras: dict[str, dict[str, torch.Tensor]] = {}
            for i, c in enumerate(progress_bar(concepts, desc="mace lora", enabled=progress)):
                images, masks = data[c.name]
                sd, hist = train_concept_lora(
                    pipe, c.prompts, c.phrases, images, masks, cfg, device, seed=cfg.seed + i
                )
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
        _set_weights(unet, names, base)

    report["delta_rel_norm"] = {
        n: float(deltas[n].norm() / w.float().cpu().norm().clamp_min(1e-30))
        for n, w in zip(names, base, strict=True)
    }
    report["wall_time_s"] = time.perf_counter() - t0
    report["phase_s"] = phase_s
    report["peak_memory"] = _peak_memory(device)
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


@torch.no_grad()
def _set_weights(unet, names: Sequence[str], weights: Sequence[torch.Tensor]) -> None:
    for n, w in zip(names, weights, strict=True):
        lin = _linear(unet, n)
        lin.weight.copy_(w.to(lin.weight.device, lin.weight.dtype))


@torch.no_grad()
def apply_deltas(unet, deltas: dict[str, torch.Tensor]) -> None:
    """Add ``deltas`` to the named Linear weights in place (in memory, no LoRA machinery)."""
    for n, d in deltas.items():
        lin = _linear(unet, n)
        lin.weight.add_(d.to(lin.weight.device, lin.weight.dtype))


# ----------------------------------------------------------------------------- persistence


def deltas_to_lora(
    deltas: dict[str, torch.Tensor], rtol: float = 1e-6, prefix: str = "unet."
) -> dict[str, torch.Tensor]:
    """Exact low-rank factors of each delta: B = U sqrt(S), A = sqrt(S) V^T, dropping singular values
    below ``rtol`` x the largest. No alphas are stored, so diffusers uses alpha = rank (scale 1)."""
    out: dict[str, torch.Tensor] = {}
    for n, d in deltas.items():
        U, S, Vh = torch.linalg.svd(d.to(torch.float64), full_matrices=False)
        tol = rtol * float(S[0]) if S.numel() else 0.0
        r = max(1, int((tol < S).sum())) if tol > 0 else 1
        s = S[:r].sqrt()
        out[f"{prefix}{n}.lora_A.weight"] = (s[:, None] * Vh[:r]).to(torch.float32)
        out[f"{prefix}{n}.lora_B.weight"] = (U[:, :r] * s[None, :]).to(torch.float32)
    return out


def lora_file_deltas(path: str | Path, prefix: str = "unet.") -> dict[str, torch.Tensor]:
    """Dense deltas (float64) stored in a LoRA file written by `save_erasure`."""
    from safetensors.torch import load_file

    sd = load_file(str(path))
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in lora_deltas(sd).items()}


def no_erasure(unet, spec: dict[str, Any]) -> Erasure:
    """A zero edit of every key/value map: the erased state of a model that never learned the concepts
    (the exact-unlearning control), written like any erasure so the stages after it run unchanged."""
    deltas = {n: torch.zeros_like(w) for n, w in kv_weights(unet).items()}
    return Erasure(deltas=deltas, report={"method": "none", "spec": spec, "concepts": [c["name"] for c in spec["concepts"]]})


def save_erasure(erasure: Erasure, out_dir: str | Path) -> Path:
    """Write `erased_lora.safetensors`, `concepts/<slug>.safetensors` and `report.json` (last)."""
    out = Path(out_dir)
    lora = deltas_to_lora(erasure.deltas)
    meta = {
        "format": "pt",
        "producer": "resurgence.mace",
        "note": "MACE erasure: fuse at scale 1 into the base model",
    }
    save_safetensors(lora, out / LORA_FILE, metadata=meta)
    concept_files = {}
    for name, sd in erasure.concept_loras.items():
        path = out / "concepts" / f"{slug(name)}.safetensors"
        # Per-concept LoRAs are relative to the *refined* weights, not the base model.
        save_safetensors(
            {f"unet.{k}": v for k, v in sd.items()},
            path,
            metadata={"format": "pt", "concept": name, "relative_to": "refined"},
        )
        concept_files[name] = str(path.relative_to(out))
    report = dict(erasure.report)
    report["lora_file"] = LORA_FILE
    report["lora_ranks"] = {
        k[len("unet.") : -len(".lora_A.weight")]: int(v.shape[0])
        for k, v in lora.items()
        if k.endswith("lora_A.weight")
    }
    report["concept_lora_files"] = concept_files
    write_json(out / REPORT_FILE, report)
    return out


def load_report(out_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(out_dir) / REPORT_FILE)


def apply_erasure(
    pipe, out_dir: str | Path, weight_name: str = LORA_FILE, rtol: float = 1e-5
) -> dict[str, torch.Tensor]:
    """Load the erasure LoRA, fuse it and unload the adapter; check to_k/to_v == base + delta.

    Returns the applied deltas. Raises RuntimeError when the fused weights do not match.
    """
    out = Path(out_dir)
    deltas = lora_file_deltas(out / weight_name)
    unet = pipe.unet
    before = kv_weights(unet, deltas)
    pipe.load_lora_weights(str(out), weight_name=weight_name, adapter_name=ADAPTER_NAME)
    pipe.fuse_lora(lora_scale=1.0, adapter_names=[ADAPTER_NAME])
    pipe.unload_lora_weights()
    after = kv_weights(unet, deltas)
    bad = []
    for n, d in deltas.items():
        w = after[n]
        expected = before[n] + d
        err = float((w - expected).norm() / expected.norm().clamp_min(1e-30))
        if not err <= rtol:
            bad.append(f"{n}: rel err {err:.2e}")
    if bad:
        raise RuntimeError(f"fused erasure does not match base + delta (rtol {rtol:g}): {bad[:5]}")
    return {n: d.to(torch.float32) for n, d in deltas.items()}
