"""MACE closed-form math, checked against independent least-squares solutions; config and helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from resurgence.erasure.artifact import deltas_to_lora, lora_deltas, slug
from resurgence.mace.attention import find_phrase_positions, masked_attention_terms
from resurgence.mace.config import EraseConfig
from resurgence.mace.erase import mapping_prompts
from resurgence.mace.fusion import fuse_weights
from resurgence.mace.lora import importance_weights
from resurgence.mace.refine import SingularSystemError, align_token_indices, refine_weights

D = torch.float64


def lstsq_rows(blocks: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Solve the stacked system [X_1; X_2; ...] W^T = [Y_1; Y_2; ...] by lstsq; return W."""
    X = torch.cat([x for x, _ in blocks])
    Y = torch.cat([y for _, y in blocks])
    return torch.linalg.lstsq(X, Y).solution.T


def refine_reference(W, E_co, E_gen, E_p, lam, ridge):
    eye = torch.eye(W.shape[1], dtype=D)
    blocks = [(E_co, E_gen @ W.T)]
    if lam > 0:
        blocks.append((math.sqrt(lam) * E_p, math.sqrt(lam) * E_p @ W.T))
    if ridge > 0:
        blocks.append((math.sqrt(ridge) * eye, math.sqrt(ridge) * W.T))
    return lstsq_rows(blocks)


@pytest.mark.parametrize("lam", [0.0, 1e-4, 1.0, 10.0])
@pytest.mark.parametrize("ridge", [0.0, 0.5])
def test_refine_matches_stacked_lstsq(lam: float, ridge: float) -> None:
    g = torch.Generator().manual_seed(int(lam * 1000) + int(ridge * 10))
    L, out, dim, n, m = 3, 5, 6, 9, 7  # n >= dim: well posed even with lam = ridge = 0
    W = torch.randn(L, out, dim, generator=g, dtype=D)
    E_co, E_gen = torch.randn(n, dim, generator=g, dtype=D), torch.randn(n, dim, generator=g, dtype=D)
    E_p = torch.randn(m, dim, generator=g, dtype=D)
    got = refine_weights(W, E_co, E_gen, E_p, lam, ridge)
    assert got.shape == W.shape and got.dtype == W.dtype
    for layer in range(L):
        ref = refine_reference(W[layer], E_co, E_gen, E_p, lam, ridge)
        torch.testing.assert_close(got[layer], ref, rtol=1e-9, atol=1e-9)


def test_refine_list_of_layers_with_different_out_dims_and_float32() -> None:
    g = torch.Generator().manual_seed(1)
    dim = 4
    Ws = [torch.randn(o, dim, generator=g) for o in (3, 7, 2)]
    E_co, E_gen, E_p = (torch.randn(k, dim, generator=g) for k in (5, 5, 6))
    got = refine_weights(Ws, E_co, E_gen, E_p, 1e-2)
    assert [w.shape for w in got] == [w.shape for w in Ws] and all(w.dtype == torch.float32 for w in got)
    for w, w1 in zip(Ws, got, strict=True):
        ref = refine_reference(w.double(), E_co.double(), E_gen.double(), E_p.double(), 1e-2, 0.0)
        torch.testing.assert_close(w1.double(), ref, rtol=1e-5, atol=1e-5)


def test_refine_with_small_lambda_fits_coexisting_exactly_when_underdetermined() -> None:
    g = torch.Generator().manual_seed(2)
    W = torch.randn(4, 8, generator=g, dtype=D)
    E_co, E_gen = torch.randn(3, 8, generator=g, dtype=D), torch.randn(3, 8, generator=g, dtype=D)
    E_p = torch.randn(20, 8, generator=g, dtype=D)
    W1 = refine_weights(W, E_co, E_gen, E_p, 1e-8)
    torch.testing.assert_close(E_co @ W1.T, E_gen @ W.T, rtol=1e-5, atol=1e-5)


def test_rank_deficient_raises_or_returns_min_change_solution() -> None:
    g = torch.Generator().manual_seed(3)
    dim = 6
    W = torch.randn(2, 4, dim, generator=g, dtype=D)
    E_co, E_gen = torch.randn(3, dim, generator=g, dtype=D), torch.randn(3, dim, generator=g, dtype=D)
    with pytest.raises(SingularSystemError, match="singular"):
        refine_weights(W, E_co, E_gen, None, 0.0)
    info: dict = {}
    W1 = refine_weights(W, E_co, E_gen, None, 0.0, on_singular="pinv", info=info)
    assert info["method"] == "pinv" and info["rank"] == 3 and info["dim"] == dim
    # exact fit on the constrained directions ...
    torch.testing.assert_close(E_co @ W1.transpose(1, 2), E_gen @ W.transpose(1, 2), rtol=1e-9, atol=1e-9)
    # ... unchanged on the directions no embedding constrains ...
    null = torch.linalg.svd(E_co).Vh[3:].T  # (dim, dim-3), orthogonal to E_co's rows
    torch.testing.assert_close(W1 @ null, W @ null, rtol=1e-9, atol=1e-9)
    # ... which is the limit of the ridge solution.
    W_ridge = refine_weights(W, E_co, E_gen, None, 0.0, ridge=1e-7)
    torch.testing.assert_close(W1, W_ridge, rtol=1e-5, atol=1e-5)


def test_direction_at_float32_noise_floor_is_left_unchanged_by_default() -> None:
    """Embeddings whose Gram has one eigenvalue 1e-12 of the largest (a singular value at float32's
    rounding, as the toy text encoder's states have): by default that direction is unconstrained and W
    keeps its values there; solved as a constraint it takes a weight of arbitrary size."""
    g = torch.Generator().manual_seed(11)
    dim, n = 6, 40
    W = torch.randn(3, dim, generator=g, dtype=D)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=D)).Q
    scales = torch.tensor([1.0, 0.8, 0.6, 0.5, 0.4, 1e-6], dtype=D)  # last: eigenvalue 1e-12 relative
    coeffs = torch.randn(n, dim, generator=g, dtype=D)
    E_co = (coeffs * scales) @ basis.T
    E_gen = torch.randn(n, dim, generator=g, dtype=D) @ torch.diag(scales) @ basis.T
    weak = basis[:, -1:]
    info: dict = {}
    W1 = refine_weights(W, E_co, E_gen, None, 0.0, on_singular="pinv", info=info)
    assert info["method"] == "pinv" and info["rank"] == dim - 1
    torch.testing.assert_close(W1 @ weak, W @ weak, rtol=1e-4, atol=1e-4)
    assert float((W1 - W).norm() / W.norm()) < 10
    W_solved = refine_weights(W, E_co, E_gen, None, 0.0, rcond=1e-14, on_singular="pinv")
    assert float(((W_solved - W) @ weak).norm()) > 100 * float(W.norm())


def test_refine_rejects_bad_shapes() -> None:
    W = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="E_co"):
        refine_weights(W, torch.zeros(4, 5), torch.zeros(4, 5), None, 1.0)
    with pytest.raises(ValueError, match="pair up"):
        refine_weights(W, torch.zeros(4, 3), torch.zeros(5, 3), None, 1.0)


@pytest.mark.parametrize("lam_f", [0.0, 1e-4, 1.0])
@pytest.mark.parametrize("ridge", [0.0, 2.0])
def test_fusion_matches_stacked_lstsq(lam_f: float, ridge: float) -> None:
    g = torch.Generator().manual_seed(7)
    L, out, dim = 2, 5, 6
    W = torch.randn(L, out, dim, generator=g, dtype=D)
    W_prior = torch.randn(L, out, dim, generator=g, dtype=D)
    deltas = [torch.randn(L, out, dim, generator=g, dtype=D) for _ in range(3)]
    Es = [torch.randn(k, dim, generator=g, dtype=D) for k in (4, 3, 5)]  # 12 rows >= dim
    E_p = torch.randn(8, dim, generator=g, dtype=D)
    got = fuse_weights(W, deltas, Es, E_p, lam_f, ridge, W_prior=W_prior)
    for layer in range(L):
        blocks = [(E, E @ (W[layer] + d[layer]).T) for E, d in zip(Es, deltas, strict=True)]
        if lam_f > 0:
            blocks.append((math.sqrt(lam_f) * E_p, math.sqrt(lam_f) * E_p @ W_prior[layer].T))
        if ridge > 0:
            blocks.append((math.sqrt(ridge) * torch.eye(dim, dtype=D), math.sqrt(ridge) * W[layer].T))
        torch.testing.assert_close(got[layer], lstsq_rows(blocks), rtol=1e-9, atol=1e-9)


def test_fusion_of_one_lora_without_prior_reproduces_it() -> None:
    g = torch.Generator().manual_seed(8)
    W, d = torch.randn(3, 4, 5, generator=g, dtype=D), torch.randn(3, 4, 5, generator=g, dtype=D)
    E = torch.randn(10, 5, generator=g, dtype=D)
    torch.testing.assert_close(fuse_weights(W, [d], [E], None, 0.0), W + d, rtol=1e-9, atol=1e-9)


def test_fusion_singular_raises() -> None:
    W = torch.zeros(1, 2, 4, dtype=D)
    with pytest.raises(SingularSystemError):
        fuse_weights(W, [W], [torch.ones(2, 4, dtype=D)], None, 0.0)


# ----------------------------------------------------------------------------- token alignment


def test_align_tokens_pairs_prefix_suffix_and_padding() -> None:
    # <bos> a photo of [ann x] <eos>  vs  <bos> a photo of [a person] <eos>
    a = [0, 1, 2, 3, 10, 11, 9]
    b = [0, 1, 2, 3, 20, 21, 9]
    ia, ib = align_token_indices(a, b, max_length=10)
    assert ia == [0, 1, 2, 3, 6, 7, 8, 9] and ib == [0, 1, 2, 3, 6, 7, 8, 9]
    # different lengths: suffix aligned from the end, padding truncated to the longer prompt
    a = [0, 1, 10, 11, 12, 5, 9]  # concept of 3 tokens, then "5", <eos>
    b = [0, 1, 20, 5, 9]
    ia, ib = align_token_indices(a, b, max_length=9)
    assert ia == [0, 1, 5, 6, 7, 8] and ib == [0, 1, 3, 4, 5, 6]
    ia, ib = align_token_indices(a, b, max_length=9, include_padding=False)
    assert ia == [0, 1, 5, 6] and ib == [0, 1, 3, 4]
    # prefix and suffix never overlap
    ia, ib = align_token_indices([0, 7, 7, 9], [0, 7, 9], max_length=4, include_padding=False)
    assert ia == [0, 1, 3] and ib == [0, 1, 2]


def test_phrase_positions_and_mapping_prompts() -> None:
    assert find_phrase_positions([1, 5, 6, 2, 5, 6], [5, 6]) == [1, 2, 4, 5]
    assert find_phrase_positions([1, 2], []) == []
    out = mapping_prompts(["A portrait of Ann X", "ann x and the Annex"], ["Ann X"], "a person")
    assert out == ["A portrait of a person", "a person and the Annex"]
    # longest phrase first: "sail boat" is replaced whole, not as "sail" + "boat"
    assert mapping_prompts(["a sail boat"], ["boat", "sail boat"], "ground") == ["a ground"]
    with pytest.raises(ValueError, match="none of the phrases"):
        mapping_prompts(["a dog"], ["Ann X"], "a person")
    assert slug("Ann  X!") == "ann-x"


# ----------------------------------------------------------------------------- attention loss terms


def test_masked_attention_terms_against_loops() -> None:
    g = torch.Generator().manual_seed(4)
    B, heads, h, w, S = 2, 3, 4, 4, 6
    probs = torch.rand(B * heads, h * w, S, generator=g).softmax(-1)
    tok = torch.zeros(B, S, dtype=torch.bool)
    tok[0, [1, 2]] = True
    tok[1, [4]] = True
    spatial = torch.zeros(B, 1, 8, 8)  # twice the layer resolution: nearest picks even pixels
    spatial[0, 0, :4, :4] = 1
    spatial[1, 0, 4:, :] = 1
    sq, mass = masked_attention_terms(probs, tok, spatial)
    ref_sq, ref_mass, count = [0.0] * B, 0.0, 0
    for b in range(B):
        small = spatial[b, 0, ::2, ::2].reshape(-1) > 0.5
        for hd in range(heads):
            for p in range(h * w):
                if not small[p]:
                    continue
                count += 1
                for s in range(S):
                    if tok[b, s]:
                        v = float(probs[b * heads + hd, p, s])
                        ref_sq[b] += v * v
                        ref_mass += v
    assert sq.tolist() == pytest.approx(ref_sq, rel=1e-5)  # each prompt's own sum
    assert mass.item() == pytest.approx(ref_mass / count, rel=1e-5)


def test_importance_weights_concentrate_on_200_400() -> None:
    p = importance_weights(1000)
    assert p.shape == (1000,) and p.sum() == pytest.approx(1.0) and (p > 0).all()
    assert p[200:401].sum() > 0.8 and 250 < int(np.argmax(p)) < 350


# ----------------------------------------------------------------------------- config


def test_config_presets_follow_reference() -> None:
    c = EraseConfig.celebrity()
    assert (c.mapping, c.lambda1, c.fusion_lambda, c.ridge, c.domain_weight) == (
        "a person",
        1e-4,
        1e-4,
        0.0,
        8e4,
    )
    assert (c.lora_rank, c.lora_steps, c.lora_lr, c.train_batch_size, c.images_per_concept, c.seed) == (
        1,
        50,
        1e-4,
        1,
        8,
        2024,
    )
    assert EraseConfig.celebrity(1).domain_weight == 8e3 and EraseConfig.celebrity(100).domain_weight == 2e5
    o = EraseConfig.objects("ship")
    assert (o.mapping, o.ridge, o.lambda1, o.fusion_lambda, o.lora_lr) == ("ground", 1e3, 0.0, 0.0, 1e-5)
    assert EraseConfig.objects("automobile").ridge == 1e2 and EraseConfig.objects("bird").mapping == "street"
    multi = EraseConfig.objects(["ship", "cat"])
    assert multi.mapping_for("ship") == "ground" and multi.mapping_for("cat") == "ground"
    with pytest.raises(KeyError):
        multi.mapping_for("dog")


def test_config_from_dict() -> None:
    c = EraseConfig.from_dict(
        {"mapping": {"Ann X": "a female celebrity"}, "preserve": ["a dog"], "lambda1": 0.1}
    )
    assert c.mapping_for("Ann X") == "a female celebrity" and c.preserve == ("a dog",) and c.lambda1 == 0.1
    assert EraseConfig.from_dict(c.to_dict()) == c
    assert EraseConfig.from_dict({"lora_steps": 3}, preset="object").ridge == 1e3
    with pytest.raises(ValueError, match=r"\['bogus', 'lamda1'\]"):
        EraseConfig.from_dict({"lamda1": 1.0, "bogus": 2})
    with pytest.raises(ValueError, match="lambda1"):
        EraseConfig(lambda1=-1.0)


# ----------------------------------------------------------------------------- LoRA conversions


def test_deltas_to_lora_is_exact_and_low_rank() -> None:
    g = torch.Generator().manual_seed(5)
    low = torch.randn(7, 2, generator=g) @ torch.randn(2, 5, generator=g)
    full = torch.randn(4, 6, generator=g)
    deltas = {"a.to_k": low, "b.to_v": full, "c.to_k": torch.zeros(3, 3)}
    lora = deltas_to_lora(deltas)
    assert lora["unet.a.to_k.lora_A.weight"].shape == (2, 5) and lora["unet.a.to_k.lora_B.weight"].shape == (
        7,
        2,
    )
    assert lora["unet.b.to_v.lora_A.weight"].shape == (4, 6)
    back = {k[len("unet.") :]: v for k, v in lora_deltas(lora).items()}
    for k, d in deltas.items():
        torch.testing.assert_close(back[k].float(), d, rtol=1e-5, atol=1e-6)
