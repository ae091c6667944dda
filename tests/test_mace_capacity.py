"""The erase/retain frontier (resurgence.mace.capacity) against independent computations."""

import pytest
import torch

from resurgence.mace.capacity import (
    concept_differences,
    covariance,
    erasure_tradeoff,
    eval_prompt_sets,
    principal_dims,
    share_in_span,
)
from resurgence.models.pipeline import build_random_pipeline


def _lstsq_point(De, Dr, w):
    """Independent: least squares on the stacked rows [De/sqrt(ne); sqrt(w) Dr/sqrt(nr)] M^T = [0; sqrt(w) Dr/sqrt(nr)]."""
    a = De / De.shape[0] ** 0.5
    b = (w / Dr.shape[0]) ** 0.5 * Dr
    X = torch.cat([a, b])
    Y = torch.cat([torch.zeros_like(a), b])
    M = torch.linalg.lstsq(X, Y).solution.T
    left = (De @ M.T).pow(2).sum() / De.pow(2).sum()
    dist = (Dr @ (M - torch.eye(M.shape[0], dtype=M.dtype)).T).pow(2).sum() / Dr.pow(2).sum()
    return float(left), float(dist)


def test_frontier_matches_least_squares_on_random_sets():
    g = torch.Generator().manual_seed(0)
    De = torch.randn(300, 24, generator=g, dtype=torch.float64) @ torch.randn(
        24, 24, generator=g, dtype=torch.float64
    )
    Dr = torch.randn(80, 24, generator=g, dtype=torch.float64)
    for p in erasure_tradeoff(De, Dr, [0.01, 1.0, 100.0], ridge=0.0):
        left, dist = _lstsq_point(De, Dr, p.weight)
        assert p.erased_left == pytest.approx(left, rel=1e-8, abs=1e-12)
        assert p.retained_distortion == pytest.approx(dist, rel=1e-8, abs=1e-12)


def test_identical_sets_give_the_scalar_tradeoff():
    """Retaining exactly what is erased: M = w/(1+w) I, so left = (w/(1+w))^2 and distortion = (1/(1+w))^2."""
    D = torch.randn(50, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for p in erasure_tradeoff(D, D.clone(), [0.5, 3.0], ridge=0.0):
        w = p.weight
        assert p.erased_left == pytest.approx((w / (1 + w)) ** 2, rel=1e-9)
        assert p.retained_distortion == pytest.approx((1 / (1 + w)) ** 2, rel=1e-9)


def test_disjoint_subspaces_erase_without_cost():
    """Erased and retained signals in orthogonal coordinates: both shares ~0 at any weight (ridge fills the rest)."""
    g = torch.Generator().manual_seed(2)
    De = torch.zeros(40, 10, dtype=torch.float64)
    Dr = torch.zeros(40, 10, dtype=torch.float64)
    De[:, :4] = torch.randn(40, 4, generator=g, dtype=torch.float64)
    Dr[:, 4:8] = torch.randn(40, 4, generator=g, dtype=torch.float64)
    for p in erasure_tradeoff(De, Dr, [0.1, 10.0]):
        assert p.erased_left < 1e-6
        assert p.retained_distortion < 1e-6


def test_more_retain_weight_moves_along_the_frontier():
    g = torch.Generator().manual_seed(3)
    shared = torch.randn(6, 16, generator=g, dtype=torch.float64)
    De = torch.randn(200, 6, generator=g, dtype=torch.float64) @ shared
    Dr = torch.randn(60, 6, generator=g, dtype=torch.float64) @ shared + 0.3 * torch.randn(
        60, 16, generator=g, dtype=torch.float64
    )
    pts = erasure_tradeoff(De, Dr, [0.01, 0.1, 1.0, 10.0, 100.0])
    lefts = [p.erased_left for p in pts]
    dists = [p.retained_distortion for p in pts]
    assert lefts == sorted(lefts) and dists == sorted(dists, reverse=True)
    assert lefts[-1] > 0.1 and dists[0] > 0.1  # overlapping spans: no weight gets both small


def test_bad_inputs_are_named():
    D = torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="feature dims"):
        erasure_tradeoff(D, torch.randn(5, 3, dtype=torch.float64), [1.0])
    with pytest.raises(ValueError, match="> 0"):
        erasure_tradeoff(D, D, [0.0])
    with pytest.raises(ValueError, match="non-empty"):
        covariance(torch.zeros(0, 4))


def test_concept_differences_on_a_tiny_pipeline(tmp_path):
    """Rows are h_co - h_gen of the paired positions: zero before the concept (shared prefix), nonzero after."""
    tiny_pipe = build_random_pipeline("tiny", seed=0, tokenizer_dir=tmp_path)
    prompts = ("a photo of zorblax", "zorblax in a park")
    D = concept_differences(tiny_pipe, {"zorblax": (prompts, ("zorblax",))}, "a person")
    assert D.dtype == torch.float64 and D.shape[1] == tiny_pipe.text_encoder.config.hidden_size
    assert D.abs().sum(dim=1).gt(0).any() and D.abs().sum(dim=1).eq(0).any()
    # one mapping per concept: each concept's rows are those of its own mapping
    sets = {"zorblax": (prompts, ("zorblax",)), "quux": (("a photo of quux",), ("quux",))}
    per = concept_differences(tiny_pipe, sets, {"zorblax": "a person", "quux": "a dog"})
    assert torch.equal(per[: len(D)], D)
    assert torch.equal(per[len(D) :], concept_differences(tiny_pipe, {"quux": sets["quux"]}, "a dog"))
    assert not torch.equal(per[len(D) :], concept_differences(tiny_pipe, {"quux": sets["quux"]}, "a person"))


def test_principal_dims_count_the_directions_by_variance():
    """Rows +-a_k e_k (mean zero): direction k holds a_k^2 / sum a^2 of the variance, in a random rotation."""
    a = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64)  # variance shares .753, .188, .047, .012
    Q = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[
        0
    ]
    rows = torch.cat([torch.diag(a), -torch.diag(a)]) @ Q[:4]
    assert principal_dims(rows, (0.5, 0.9, 0.96, 0.99, 1.0)) == {0.5: 1, 0.9: 2, 0.96: 3, 0.99: 4, 1.0: 4}
    with pytest.raises(ValueError, match="rows >= 2"):
        principal_dims(rows[:1])


def test_share_in_span_is_the_projected_energy():
    """Retained rows built from known in-span and orthogonal parts; duplicate erased rows change nothing."""
    Q = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))[0]
    u1, u2, v1, v2 = Q[:, 0], Q[:, 1], Q[:, 2], Q[:, 3]
    De = torch.stack([u1 + u2, u1 - u2, 2 * u1])  # spans {u1, u2}, rank 2 from 3 rows
    Dr = torch.stack([3 * u1 + 4 * v1, 2 * v2])  # in-span energy 9 of 9 + 16 + 4
    assert share_in_span(Dr, De) == pytest.approx(9 / 29, abs=1e-12)
    assert share_in_span(Dr, torch.stack([v1, v2, u1])) == pytest.approx(1.0, abs=1e-12)
    assert share_in_span(Dr, torch.stack([Q[:, 5]])) == pytest.approx(0.0, abs=1e-12)


def test_eval_prompt_sets_pair_each_concept_with_its_names():
    from resurgence.toyworld.concepts import toy_world

    world = toy_world()
    name = world.identities[0].name
    sets = eval_prompt_sets(world, [name])
    prompts, phrases = sets[name]
    assert phrases == world.concept(name).names and prompts and all(name in p for p in prompts)


def test_edit_effects_match_a_row_by_row_computation():
    """Independent: numpy, one layer and one row at a time, summed squares."""
    import numpy as np

    from resurgence.mace.capacity import edit_effects

    g = torch.Generator().manual_seed(3)
    W = [
        torch.randn(5, 7, generator=g, dtype=torch.float64),
        torch.randn(3, 7, generator=g, dtype=torch.float64),
    ]
    W1 = [w + 0.3 * torch.randn(w.shape, generator=g, dtype=torch.float64) for w in W]
    ce, ge, cr, gr, H = (torch.randn(n, 7, generator=g, dtype=torch.float64) for n in (6, 6, 4, 4, 9))
    eff = edit_effects(W, W1, (ce, ge), (cr, gr), {"tokens": H})

    def ratio(num_rows, den_rows):
        return np.sqrt(sum(np.sum(r**2) for r in num_rows) / sum(np.sum(r**2) for r in den_rows))

    Wn, W1n = [w.numpy() for w in W], [w.numpy() for w in W1]
    left = ratio(
        [
            w1 @ c - w @ gg
            for w, w1 in zip(Wn, W1n, strict=True)
            for c, gg in zip(ce.numpy(), ge.numpy(), strict=True)
        ],
        [w @ (c - gg) for w in Wn for c, gg in zip(ce.numpy(), ge.numpy(), strict=True)],
    )
    dist = ratio(
        [(w1 - w) @ c for w, w1 in zip(Wn, W1n, strict=True) for c in cr.numpy()],
        [w @ (c - gg) for w in Wn for c, gg in zip(cr.numpy(), gr.numpy(), strict=True)],
    )
    change = ratio(
        [(w1 - w) @ h for w, w1 in zip(Wn, W1n, strict=True) for h in H.numpy()],
        [w @ h for w in Wn for h in H.numpy()],
    )
    assert eff.erased_left == pytest.approx(left, rel=1e-10)
    assert eff.retained_distortion == pytest.approx(dist, rel=1e-10)
    assert eff.output_change == {"tokens": pytest.approx(change, rel=1e-10)}
    size = np.sqrt(
        sum(np.sum((w1 - w) ** 2) for w, w1 in zip(Wn, W1n, strict=True)) / sum(np.sum(w**2) for w in Wn)
    )
    assert eff.edit_rel_norm == pytest.approx(size, rel=1e-10)
    # no edit: every erased concept left whole, nothing retained moved
    none = edit_effects(W, W, (ce, ge), (cr, gr), {"tokens": H})
    assert (
        none.erased_left == pytest.approx(1.0)
        and none.retained_distortion == 0.0
        and none.output_change == {"tokens": 0.0}
        and none.edit_rel_norm == 0.0
    )
