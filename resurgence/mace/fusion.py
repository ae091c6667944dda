"""MACE stage 3: closed-form fusion of the per-concept LoRAs into one set of weights.

For each cross-attention `to_k`/`to_v` matrix, with W the refined weights and dW_c concept c's LoRA
update, we solve

    min_W*  sum_c sum_{e in E_c} ||W* e - (W + dW_c) e||^2
            + lambda_f sum_{e in E_prior} ||W* e - W_prior e||^2  +  ridge ||W* - W||_F^2

i.e.  W* (sum_c G_c + lambda_f G_p + ridge I) = sum_c (W + dW_c) G_c + lambda_f W_prior G_p + ridge W,
with G = E^T E. As in the reference (`fuse_lora_close_form.py`): E_c are all token positions of
concept c's prompts, the prior targets come from the *original* (pre-erasure) weights W_prior
(the reference's caches are computed on the untouched model), and the ridge `lamb` pulls toward
the refined weights W. Singular systems are handled as in `refine.solve_normal_equations`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from resurgence.mace.refine import (
    NULL_RCOND,
    WeightsLike,
    check_embeddings,
    gram,
    solve_normal_equations,
    stack_rows,
    unstack_rows,
)


def fuse_weights(
    W: WeightsLike,
    deltas: Sequence[WeightsLike],
    E_concepts: Sequence[torch.Tensor],
    E_prior: torch.Tensor | None,
    fusion_lambda: float,
    ridge: float = 0.0,
    W_prior: WeightsLike | None = None,
    rcond: float = NULL_RCOND,
    on_singular: str = "raise",
    info: dict | None = None,
) -> WeightsLike:
    """Fused weights W* for every layer; same structure/dtype/device as W, float64 inside.

    deltas[c] has W's structure (per-layer update of concept c); E_concepts[c] is (n_c, in).
    ``W_prior`` (default W) gives the prior targets.
    """
    if len(deltas) != len(E_concepts):
        raise ValueError(f"{len(deltas)} LoRA updates but {len(E_concepts)} concept embedding sets")
    if fusion_lambda < 0 or ridge < 0:
        raise ValueError(f"fusion_lambda and ridge must be >= 0; got {fusion_lambda}, {ridge}")
    rows, sizes, _ = stack_rows(W)
    dim = rows.shape[1]
    dev = rows.device
    rows = rows.to(torch.float64)
    A = ridge * torch.eye(dim, dtype=torch.float64, device=dev)
    B = ridge * rows
    for c, (d, E) in enumerate(zip(deltas, E_concepts, strict=True)):
        check_embeddings(f"E_concepts[{c}]", E, dim)
        d_rows, d_sizes, _ = stack_rows(d)
        if d_sizes != sizes or d_rows.shape[1] != dim:
            raise ValueError(f"deltas[{c}] does not match W's layer shapes")
        G = gram(E.to(dev))
        A = A + G
        B = B + (rows + d_rows.to(dev, torch.float64)) @ G
    if E_prior is not None and E_prior.shape[0] > 0 and fusion_lambda > 0:
        check_embeddings("E_prior", E_prior, dim)
        prior_rows = rows if W_prior is None else stack_rows(W_prior)[0].to(dev, torch.float64)
        if prior_rows.shape != rows.shape:
            raise ValueError("W_prior does not match W's layer shapes")
        Gp = gram(E_prior.to(dev))
        A = A + fusion_lambda * Gp
        B = B + fusion_lambda * prior_rows @ Gp
    out = solve_normal_equations(A, B, rows, rcond=rcond, on_singular=on_singular, info=info)
    return unstack_rows(out, sizes, W)
