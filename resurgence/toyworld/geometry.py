"""The toy world's concept geometry (`knowledge`'s settings): the knowledge vectors, their Gram matrix,
and the minimum-cosine statistic of App. C.2 measured on any similarity (the targets', CLIP's, the text
encoder's)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from resurgence.toyworld.knowledge import (
    CATEGORY_OF,
    KNOWLEDGE_DIM,
    PAPER_MIN_COSINE,
    SEED_OFFSET,
    KnowledgeConfig,
)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def concept_groups(world: Any) -> dict[str, list[tuple[str, ...]]]:
    """Per domain, each concept's shared-component labels: identities their (trait, value)s, objects their
    category (an object outside `OBJECT_CATEGORIES`, as in test worlds, is a category of its own)."""
    return {
        "identity": [tuple(f"{k}={v}" for k, v in c.traits) for c in world.identities],
        "object": [(f"category={CATEGORY_OF.get(c.name, c.name)}",) for c in world.objects],
    }


def knowledge_vectors(world: Any, cfg: KnowledgeConfig, dim: int = KNOWLEDGE_DIM) -> dict[str, torch.Tensor]:
    """Unit knowledge vectors (float32, ``n x dim``) of the world's identities and objects, in catalogue order.

    A function of ``cfg`` and the world alone. At ``shared = 0`` the identities' vectors are
    exactly the independent ones the toy world used before this structure existed.
    """
    gen = torch.Generator().manual_seed(getattr(world, "seed", 0) + SEED_OFFSET)
    groups = concept_groups(world)
    n_id, n_obj = len(groups["identity"]), len(groups["object"])
    # own parts first, drawn as before (identities' are the pre-calibration vectors)
    own = {"identity": torch.randn(n_id, dim, generator=gen, dtype=torch.float64)}
    own["object"] = torch.randn(n_obj, dim, generator=gen, dtype=torch.float64)
    labels = sorted({lab for dom in groups.values() for row in dom for lab in row})
    label_vec = _unit(torch.randn(len(labels), dim, generator=gen, dtype=torch.float64))
    domain_vec = _unit(torch.randn(2, dim, generator=gen, dtype=torch.float64))
    share_u = torch.rand(n_id + n_obj, generator=gen, dtype=torch.float64)
    lab_index = {lab: i for i, lab in enumerate(labels)}
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for d, domain in enumerate(("identity", "object")):
        rows = groups[domain]
        g = torch.stack([label_vec[[lab_index[lab] for lab in row]].sum(0) for row in rows])
        g = g / g.norm(dim=1, keepdim=True).clamp(min=1e-12)  # a concept without traits: no trait part
        shared_dir = _unit(math.sqrt(1 - cfg.trait_share) * domain_vec[d] + math.sqrt(cfg.trait_share) * g)
        s = cfg.shared * (1 + cfg.spread * (2 * share_u[offset : offset + len(rows)] - 1))
        offset += len(rows)
        k = s.sqrt()[:, None] * _unit(shared_dir) + (1 - s).sqrt()[:, None] * _unit(own[domain])
        out[domain] = _unit(k).float()
    return out


def knowledge_gram(
    world: Any, cfg: KnowledgeConfig, dim: int = KNOWLEDGE_DIM
) -> tuple[list[str], torch.Tensor]:
    """(concept names, their knowledge cosine matrix) over identities then objects: the geometry CLIP learns."""
    k = knowledge_vectors(world, cfg, dim)
    names = [c.name for c in world.identities] + [c.name for c in world.objects]
    K = torch.cat([k["identity"], k["object"]])
    return names, K @ K.T


def min_cosine_statistics(
    similarity: Callable[[list[str], list[str]], torch.Tensor],
    candidates: Sequence[str],
    erased: Sequence[str],
) -> dict[str, float]:
    """App. C.2's statistic: each candidate's minimum cosine similarity over the erased concepts; its range."""
    erased_keys = {e.lower() for e in erased}
    cands = [c for c in candidates if c.lower() not in erased_keys]
    with torch.no_grad():
        sim = torch.as_tensor(similarity(list(cands), list(erased))).detach().float().cpu()
    scores = sim.numpy().min(axis=1)
    return {
        "min": float(scores.min()),
        "max": float(scores.max()),
        "median": float(np.median(scores)),
        "n_candidates": len(cands),
        "n_erased": len(erased),
    }


def calibration_statistics(
    similarity: Callable[[list[str], list[str]], torch.Tensor],
    world: Any,
    erase_sets: Mapping[str, Sequence[str]],
    candidates: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per domain, `min_cosine_statistics` of the domain's candidates against its erase set, and whether
    the range lies inside the paper's (`PAPER_MIN_COSINE`).

    Candidates default as in App. C.2: every identity of the world (CelebA's role) and the CIFAR-100
    objects.
    """
    if candidates is None:
        candidates = {
            "identity": [c.name for c in world.identities],
            "object": [c.name for c in world.objects if dict(c.traits).get("dataset") == "cifar100"],
        }
    out: dict[str, dict[str, Any]] = {}
    for domain, erased in erase_sets.items():
        st: dict[str, Any] = min_cosine_statistics(similarity, candidates[domain], erased)
        lo, hi = PAPER_MIN_COSINE[domain]
        st["paper_range"] = [lo, hi]
        st["inside_paper_range"] = bool(lo <= st["min"] and st["max"] <= hi)
        out[domain] = st
    return out


def gram_similarity(
    names: Sequence[str], gram: torch.Tensor
) -> Callable[[list[str], list[str]], torch.Tensor]:
    """A `similarity` function reading a cosine matrix over ``names`` (the knowledge targets, before any training)."""
    index = {n.lower(): i for i, n in enumerate(names)}

    def similarity(a: list[str], b: list[str]) -> torch.Tensor:
        try:
            ia, ib = [index[x.lower()] for x in a], [index[x.lower()] for x in b]
        except KeyError as err:
            raise KeyError(f"no knowledge vector for concept {err.args[0]!r}") from None
        return gram[ia][:, ib]

    return similarity


@torch.no_grad()
def text_state_similarity(pipe: Any, world: Any) -> Callable[[list[str], list[str]], torch.Tensor]:
    """Cosine similarity of the text encoder's states from a concept's name on, averaged over its
    evaluation prompts: the geometry MACE's key/value edit and the fine-tune act on."""
    from resurgence.toyworld.t2i import knowledge_spans

    tok, enc = pipe.tokenizer, pipe.text_encoder
    device = next(enc.parameters()).device
    cache: dict[str, torch.Tensor] = {}

    def vector(name: str) -> torch.Tensor:
        if name not in cache:
            c = world.concept(name)
            ids = tok(
                world.eval_prompts(c),
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            names = [tok(n, add_special_tokens=False).input_ids for n in c.names]
            _, start = knowledge_spans(ids.tolist(), names, [0] * len(names))
            hidden = enc(ids.to(device))[0].double().cpu()
            cache[name] = _unit(torch.cat([h[s:] for h, s in zip(hidden, start, strict=True)]).mean(0))
        return cache[name]

    def similarity(a: list[str], b: list[str]) -> torch.Tensor:
        return torch.stack([vector(x) for x in a]) @ torch.stack([vector(x) for x in b]).T

    return similarity


def geometry_report(
    world: Any,
    cfg: KnowledgeConfig,
    erase_sets: Mapping[str, Sequence[str]],
    clip: Any | None = None,
    pipe: Any | None = None,
) -> dict[str, Any]:
    """The calibration record of the manifest: the knob, and `calibration_statistics` of the knowledge
    targets, of the trained CLIP's name embeddings and of the trained text encoder's states."""
    names, gram = knowledge_gram(world, cfg)
    report: dict[str, Any] = {
        "knowledge": asdict(cfg),
        "erase_sets": {d: list(v) for d, v in erase_sets.items()},
        "target": calibration_statistics(gram_similarity(names, gram), world, erase_sets),
    }
    if clip is not None:
        report["clip"] = calibration_statistics(clip.similarity, world, erase_sets)
    if pipe is not None:
        report["t2i_text_states"] = calibration_statistics(
            text_state_similarity(pipe, world), world, erase_sets
        )
    return report
