"""MACE stage 1: closed-form refinement of the cross-attention key/value projections (paper Eq. 1).

For every cross-attention `to_k`/`to_v` matrix W (out x in) we solve

    min_W'  sum_i ||W' e_i^co - W e_i^gen||^2  +  lambda1 sum_j ||W' e_j^prior - W e_j^prior||^2
            + ridge ||W' - W||_F^2

whose normal equations are  W' A = W M  with
    A = E_co^T E_co + lambda1 E_prior^T E_prior + ridge I,
    M = E_gen^T E_co + lambda1 E_prior^T E_prior + ridge I.
The ridge term is the reference's `lamb` (`closed_form_refinement` adds lamb*W and lamb*I to its
two accumulators). A depends only on the embeddings, so one float64 solve serves every layer with
the same input dimension: all layers' rows are stacked and solved together.

Singular A (no ridge, no prior, fewer independent co-existing embeddings than `in`) means the
minimiser is not unique. `on_singular="raise"` reports that; `"pinv"` returns the minimiser
closest to the anchor W in Frobenius norm, W' = B A^+ + W (I - A A^+), which is the limit of the
ridge solution as ridge -> 0+ (W is left unchanged along directions no embedding constrains).

Note on the reference: its stage-1 code multiplies the cached prior by `train_preserve_scale`
twice (once when building `cache_dict`, once inside `closed_form_refinement`), so its effective
refinement prior weight is lambda1^2 (1e-8 for celebrities); its fusion stage scales once. We
implement Eq. 1 as written in the paper: the prior is weighted by lambda1 exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from resurgence.mace.config import NULL_RCOND  # defined torch-free: the Snakefile reads the config

WeightsLike = torch.Tensor | Sequence[torch.Tensor]


class SingularSystemError(ValueError):
    """The normal-equation matrix is singular: the closed-form problem has no unique solution."""


def stack_rows(W: WeightsLike) -> tuple[torch.Tensor, list[int], bool]:
    """Stack layers' rows into one (sum_out, in) matrix; remember how to split them back."""
    if isinstance(W, torch.Tensor):
        if W.ndim == 2:
            return W, [W.shape[0]], False
        if W.ndim != 3:
            raise ValueError(
                f"W must be (out, in), (L, out, in) or a list of (out, in); got shape {tuple(W.shape)}"
            )
        return W.reshape(-1, W.shape[-1]), [W.shape[1]] * W.shape[0], True
    mats = list(W)
    if not mats:
        raise ValueError("W is an empty list of layers")
    ins = {m.shape[-1] for m in mats}
    if len(ins) != 1 or any(m.ndim != 2 for m in mats):
        raise ValueError(
            f"all layers must be 2-D with one input dimension; got shapes {[tuple(m.shape) for m in mats]}"
        )
    return torch.cat(list(mats), dim=0), [m.shape[0] for m in mats], True


def unstack_rows(rows: torch.Tensor, sizes: list[int], W: WeightsLike) -> WeightsLike:
    if isinstance(W, torch.Tensor):
        return rows.reshape(W.shape).to(W.dtype)
    return [r.to(w.dtype) for r, w in zip(torch.split(rows, sizes, dim=0), W, strict=True)]


def check_embeddings(name: str, E: torch.Tensor, dim: int) -> None:
    if E.ndim != 2 or E.shape[1] != dim:
        raise ValueError(
            f"{name} must be (n, {dim}) to match W's input dimension; got shape {tuple(E.shape)}"
        )


def gram(E: torch.Tensor) -> torch.Tensor:
    """E^T E in float64 (sum of outer products of the rows)."""
    E = E.to(torch.float64)
    return E.T @ E


def solve_normal_equations(
    A: torch.Tensor,
    B: torch.Tensor,
    anchor: torch.Tensor,
    rcond: float = NULL_RCOND,
    on_singular: str = "raise",
    info: dict | None = None,
) -> torch.Tensor:
    """Solve X A = B for X (rows stacked: B, anchor are (R, in); A is symmetric PSD (in, in)).

    Singularity is judged on A's eigenvalues relative to the largest; see the module docstring
    for the "pinv" choice (minimum change from ``anchor``). ``info``, when given, receives the
    rank, dimension and relative smallest eigenvalue of A, and which path was taken.
    """
    A = A.to(torch.float64)
    A = 0.5 * (A + A.T)
    B = B.to(torch.float64)
    evals, evecs = torch.linalg.eigh(A)
    top = evals.abs().max()
    tol = rcond * top
    rank = int((evals > tol).sum())
    if info is not None:
        info.update(rank=rank, dim=int(A.shape[0]), min_eig_rel=float(evals.min() / top) if top > 0 else 0.0)
    if top > 0 and rank == A.shape[0]:
        if info is not None:
            info["method"] = "solve"
        return torch.linalg.solve(A, B.T).T
    if on_singular == "raise":
        raise SingularSystemError(
            f"normal-equation matrix is singular (rank {rank} of {A.shape[0]}, rcond={rcond:g}): "
            "the embeddings do not determine every input direction. Add preserve prompts "
            "(lambda1 > 0), a ridge > 0, more prompts, or use on_singular='pinv'."
        )
    if on_singular != "pinv":
        raise ValueError(f"on_singular must be 'raise' or 'pinv', got {on_singular!r}")
    if info is not None:
        info["method"] = "pinv"
    keep = evals > tol
    Q = evecs[:, keep]
    inv = Q @ torch.diag(1.0 / evals[keep]) @ Q.T  # A^+
    proj = Q @ Q.T  # A A^+
    anchor = anchor.to(torch.float64)
    return B @ inv + anchor - anchor @ proj


def refine_weights(
    W: WeightsLike,
    E_co: torch.Tensor,
    E_gen: torch.Tensor,
    E_prior: torch.Tensor | None,
    lambda1: float,
    ridge: float = 0.0,
    rcond: float = NULL_RCOND,
    on_singular: str = "raise",
    info: dict | None = None,
) -> WeightsLike:
    """Closed-form refined weights W' for every layer (paper Eq. 1 + the reference's ridge).

    W: (out, in), (L, out, in), or a list of (out_l, in); E_co/E_gen: (n, in) paired rows;
    E_prior: (m, in) or None. Returns the same structure and dtype as W, on W's device.
    Computation is float64 on W's device.
    """
    rows, sizes, _ = stack_rows(W)
    dim = rows.shape[1]
    dev = rows.device
    check_embeddings("E_co", E_co, dim)
    check_embeddings("E_gen", E_gen, dim)
    if E_co.shape[0] != E_gen.shape[0]:
        raise ValueError(
            f"E_co and E_gen must pair up row by row; got {E_co.shape[0]} and {E_gen.shape[0]} rows"
        )
    if lambda1 < 0 or ridge < 0:
        raise ValueError(f"lambda1 and ridge must be >= 0; got {lambda1}, {ridge}")
    C = E_co.to(dev, torch.float64)
    G = E_gen.to(dev, torch.float64)
    eye = torch.eye(dim, dtype=torch.float64, device=dev)
    A = C.T @ C + ridge * eye
    M = G.T @ C + ridge * eye
    if E_prior is not None and E_prior.shape[0] > 0 and lambda1 > 0:
        check_embeddings("E_prior", E_prior, dim)
        P = gram(E_prior.to(dev))
        A = A + lambda1 * P
        M = M + lambda1 * P
    rows64 = rows.to(torch.float64)
    out = solve_normal_equations(A, rows64 @ M, rows64, rcond=rcond, on_singular=on_singular, info=info)
    return unstack_rows(out, sizes, W)


# ---------------------------------------------------------------- text-side embeddings


def align_token_indices(
    a: Sequence[int], b: Sequence[int], max_length: int, include_padding: bool = True
) -> tuple[list[int], list[int]]:
    """Positions of the tokens two prompts share around the one span where they differ.

    The common prefix (incl. <bos>) and common suffix (incl. <eos>) are paired position by
    position; the differing middle (the concept phrase vs the mapping phrase) is dropped because
    it has no one-to-one counterpart. With ``include_padding`` the padding positions after <eos>
    are paired too, up to ``max_length`` for the longer prompt (the reference does the same).
    """
    a, b = list(a)[:max_length], list(b)[:max_length]
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    s = 0
    while s < min(len(a), len(b)) - p and a[len(a) - 1 - s] == b[len(b) - 1 - s]:
        s += 1
    ia = list(range(p)) + list(range(len(a) - s, len(a)))
    ib = list(range(p)) + list(range(len(b) - s, len(b)))
    if include_padding:
        extra = max_length - max(len(a), len(b))
        ia += list(range(len(a), len(a) + extra))
        ib += list(range(len(b), len(b) + extra))
    return ia, ib


def tokenize(tokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Token ids of ``captions`` as the text encoder takes them: padded to its length, truncated."""
    return tokenizer(
        list(captions),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """(N, max_len, dim) text-encoder hidden states exactly as the UNet sees them (chunked)."""
    te = pipe.text_encoder
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = tokenize(pipe.tokenizer, prompts[i : i + batch_size])
        out.append(te(ids.to(te.device))[0])
    return torch.cat(out)


@torch.no_grad()
def collect_coexisting_embeddings(
    pipe,
    concept_prompts: Sequence[str],
    mapping_prompts: Sequence[str],
    include_padding: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired (E_co, E_gen): hidden states of tokens co-existing with the concept, and their
    counterparts in the prompt where the concept phrase is replaced by the mapping phrase.

    In a causal text encoder the tokens after the concept (and <eos>, and padding) carry its
    identity; tokens before it are identical in both prompts and act as a built-in preservation
    term. The concept-phrase tokens themselves are not paired (see `align_token_indices`).
    """
    if len(concept_prompts) != len(mapping_prompts):
        raise ValueError(f"{len(concept_prompts)} concept prompts but {len(mapping_prompts)} mapping prompts")
    if not concept_prompts:
        raise ValueError("no concept prompts")
    tok = pipe.tokenizer
    H_co = encode_prompts(pipe, concept_prompts)
    H_gen = encode_prompts(pipe, mapping_prompts)
    co, gen = [], []
    for i, (pc, pm) in enumerate(zip(concept_prompts, mapping_prompts, strict=True)):
        ia, ib = align_token_indices(
            tok(pc).input_ids, tok(pm).input_ids, tok.model_max_length, include_padding
        )
        co.append(H_co[i, ia])
        gen.append(H_gen[i, ib])
    return torch.cat(co), torch.cat(gen)


@torch.no_grad()
def collect_token_embeddings(pipe, prompts: Sequence[str]) -> torch.Tensor:
    """Hidden states of every token position (incl. padding) of ``prompts``: (N*max_len, dim).

    This is what the reference caches for its prior/domain preservation terms and uses for the
    fusion targets (`prepare_k_v(..., all_words=True)`).
    """
    if not prompts:
        dim = pipe.text_encoder.config.hidden_size
        return torch.zeros(0, dim, device=pipe.text_encoder.device)
    H = encode_prompts(pipe, prompts)
    return H.reshape(-1, H.shape[-1])
