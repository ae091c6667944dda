"""How far *any* edit of the cross-attention key/value projections can erase a set of concepts
without also moving the concepts to retain: a bound on MACE's whole family of edits.

MACE changes only `to_k`/`to_v`, linear maps of the text encoder's hidden states. Whatever the
edit, the UNet then sees ``W' h = W (M h)`` for some map ``M`` of the text features (exactly so
when ``W`` has a left inverse). Erasing concept c asks ``M`` to send the part of its co-existing
token features that differs from the mapping prompt's, ``d = h_co - h_gen``, to zero; keeping a
retained concept asks ``M`` to leave its own differences unchanged. With the covariances
``C_e``, ``C_r`` of the two sets of differences the best linear ``M`` for a trade-off weight w,

    min_M  tr(M C_e M^T) + w tr((M - I) C_r (M - I)^T)   =>   M = w C_r (C_e + w C_r)^-1,

gives one point of the frontier: the share of erased-concept energy left against the share of
retained-concept energy distorted. When the retained concepts' differences lie in the span the
erased ones fill, no w gives both small, and no MACE setting can either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TradeoffPoint:
    """One point of the erase/retain frontier (energy shares, 0..1)."""

    weight: float
    erased_left: float  # tr(M C_e M^T) / tr(C_e): erased-concept signal that survives
    retained_distortion: float  # tr((M-I) C_r (M-I)^T) / tr(C_r): retained signal changed


def covariance(D: torch.Tensor) -> torch.Tensor:
    """Second-moment matrix of the rows of D (float64), so sets of any size weigh alike."""
    if D.ndim != 2 or D.shape[0] == 0:
        raise ValueError(f"differences must be a non-empty (rows, dim) matrix, got shape {tuple(D.shape)}")
    D = D.to(torch.float64)
    return D.T @ D / D.shape[0]


def erasure_tradeoff(
    D_erased: torch.Tensor, D_retained: torch.Tensor, weights: Sequence[float], ridge: float = 1e-9
) -> list[TradeoffPoint]:
    """The frontier of the best linear feature map at each retain weight (module docstring).

    ``ridge`` (relative to the largest eigenvalue of C_e + w C_r) keeps the solve defined when
    both sets leave some direction unconstrained; M is then the identity's minimum-change limit.
    """
    if D_erased.shape[1] != D_retained.shape[1]:
        raise ValueError(f"feature dims differ: erased {D_erased.shape[1]}, retained {D_retained.shape[1]}")
    Ce, Cr = covariance(D_erased), covariance(D_retained)
    eye = torch.eye(Ce.shape[0], dtype=torch.float64, device=Ce.device)
    points = []
    for w in weights:
        if w <= 0:
            raise ValueError(f"retain weights must be > 0, got {w}")
        eps = ridge * float(torch.linalg.eigvalsh(Ce + w * Cr).max())
        # M (C_e + w C_r + eps I) = w C_r + eps I: the eps term pulls M toward the identity.
        M = torch.linalg.solve(Ce + w * Cr + eps * eye, (w * Cr + eps * eye).T).T
        R = M - eye
        points.append(
            TradeoffPoint(
                weight=float(w),
                erased_left=float(torch.trace(M @ Ce @ M.T) / torch.trace(Ce)),
                retained_distortion=float(torch.trace(R @ Cr @ R.T) / torch.trace(Cr)),
            )
        )
    return points


@dataclass(frozen=True)
class EditEffects:
    """What a key/value edit W -> W' does to concept states, relative norms over all layers and rows."""

    edit_rel_norm: float  # ||W' - W|| / ||W||, the edit's size
    erased_left: float  # ||W' h_co - W h_gen|| / ||W (h_co - h_gen)||, erased concepts (0: fully mapped)
    retained_distortion: (
        float  # ||(W' - W) h_co|| / ||W (h_co - h_gen)||, retained: change against own signal
    )
    output_change: dict[str, float]  # per named state set: ||(W' - W) h|| / ||W h|| over its rows


def _relative(num: Sequence[torch.Tensor], den: Sequence[torch.Tensor]) -> float:
    """sqrt(sum ||num_l||^2 / sum ||den_l||^2): one relative norm over all layers."""
    top = sum(float(n.pow(2).sum()) for n in num)
    bottom = sum(float(d.pow(2).sum()) for d in den)
    return (top / bottom) ** 0.5


def edit_effects(
    W: Sequence[torch.Tensor],
    W_edited: Sequence[torch.Tensor],
    erased: tuple[torch.Tensor, torch.Tensor],
    retained: tuple[torch.Tensor, torch.Tensor],
    states: Mapping[str, torch.Tensor],
) -> EditEffects:
    """How far an edit maps the erased concepts' states and moves the retained ones (`EditEffects`).

    ``erased`` / ``retained`` are (h_co, h_gen) pairs as `concept_token_states` gives them; ``states`` named
    sets of token states (rows) whose outputs should not change. Float64; layers are (out, in) matrices.
    """
    W = [w.to(torch.float64) for w in W]
    dW = [w1.to(torch.float64) - w for w, w1 in zip(W, W_edited, strict=True)]
    (ce, ge), (cr, gr) = ([t.to(torch.float64) for t in pair] for pair in (erased, retained))
    changes = {}
    for name, H in states.items():
        H = H.to(torch.float64)
        changes[name] = _relative([H @ d.T for d in dW], [H @ w.T for w in W])
    return EditEffects(
        edit_rel_norm=_relative(dW, W),
        erased_left=_relative(
            [ce @ (w + d).T - ge @ w.T for w, d in zip(W, dW, strict=True)], [(ce - ge) @ w.T for w in W]
        ),
        retained_distortion=_relative([cr @ d.T for d in dW], [(cr - gr) @ w.T for w in W]),
        output_change=changes,
    )


def principal_dims(D: torch.Tensor, shares: Sequence[float] = (0.9, 0.99)) -> dict[float, int]:
    """Fewest principal directions holding each share of the variance of D's rows about their mean.

    Many concepts in few directions is what makes erasing some of them move the rest.
    """
    if D.ndim != 2 or D.shape[0] < 2:
        raise ValueError(f"need a (rows >= 2, dim) matrix, got shape {tuple(D.shape)}")
    D = D.to(torch.float64)
    s2 = torch.linalg.svdvals(D - D.mean(0)) ** 2
    cum = torch.cumsum(s2, 0) / s2.sum()
    return {share: int((cum < share - 1e-12).sum()) + 1 for share in shares}


def share_in_span(D_retained: torch.Tensor, D_erased: torch.Tensor, rtol: float = 1e-6) -> float:
    """Share of the retained rows' energy inside the span of the erased rows.

    A linear edit that zeroes every erased row zeroes this share of the retained signal too.
    """
    De, Dr = D_erased.to(torch.float64), D_retained.to(torch.float64)
    U, S, _ = torch.linalg.svd(De.T, full_matrices=False)
    basis = U[:, rtol * S.max() < S]
    return float((Dr @ basis).pow(2).sum() / Dr.pow(2).sum())


def eval_prompt_sets(world, names: Sequence[str]) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """Each concept's evaluation prompts and the phrases naming it, as `concept_differences` takes them."""
    concepts = [world.concept(n) for n in names]
    return {c.name: (list(world.eval_prompts(c)), tuple(c.names)) for c in concepts}


def concept_token_states(
    pipe,
    prompts_by_concept: dict[str, tuple[Sequence[str], Sequence[str]]],
    mapping: str | Mapping[str, str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked (h_co, h_gen): the text states of the tokens carrying each concept in its prompts, and their
    counterparts in the mapping prompts (what MACE's stage 1 pairs), float64 on the CPU.

    ``prompts_by_concept[name] = (prompts, phrases)``; the mapping concept (one for all, or one per
    concept name) replaces the phrases.
    """
    from resurgence.mace.erase import mapping_prompts
    from resurgence.mace.refine import collect_coexisting_embeddings

    co, gen = [], []
    for name, (prompts, phrases) in prompts_by_concept.items():
        target = mapping if isinstance(mapping, str) else mapping[name]
        c, g = collect_coexisting_embeddings(pipe, list(prompts), mapping_prompts(prompts, phrases, target))
        co.append(c.to(torch.float64).cpu())
        gen.append(g.to(torch.float64).cpu())
    return torch.cat(co), torch.cat(gen)


def concept_differences(
    pipe,
    prompts_by_concept: dict[str, tuple[Sequence[str], Sequence[str]]],
    mapping: str | Mapping[str, str],
):
    """Stacked h_co - h_gen of each concept's prompts against its mapping prompts (`concept_token_states`)."""
    co, gen = concept_token_states(pipe, prompts_by_concept, mapping)
    return co - gen
