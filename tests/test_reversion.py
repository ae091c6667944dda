"""Reversion diagnostics: how far a fine-tune undoes the erasure edit, checked against hand-built edits."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from resurgence.erasure.artifact import apply_deltas, kv_weights
from resurgence.metrics.reversion import MEASURES, TOTAL, reversion, reversion_table
from resurgence.models.pipeline import build_random_pipeline


def _reference(wb: np.ndarray, we: np.ndarray, wf: np.ndarray, E: np.ndarray) -> dict[str, float]:
    """The measures written out from their definitions, in numpy."""
    de, df = (we - wb).ravel(), (wf - we).ravel()
    kb, ke, kf = ((E @ w.T).ravel() for w in (wb, we, wf))
    return {
        "erase_rel_norm": np.linalg.norm(de) / np.linalg.norm(wb),
        "finetune_rel_norm": np.linalg.norm(df) / np.linalg.norm(we),
        "edit_to_update": np.linalg.norm(de) / np.linalg.norm(df),
        "reversion_cosine": float(np.dot(df, -de) / (np.linalg.norm(df) * np.linalg.norm(de))),
        "undone_fraction": float(np.dot(df, -de) / np.dot(de, de)),
        "kv_return": float(np.dot(kf - ke, kb - ke) / np.dot(kb - ke, kb - ke)),
        "kv_remaining": float(np.linalg.norm(kf - kb) / np.linalg.norm(ke - kb)),
    }


def test_a_fine_tune_at_a_known_angle_to_the_edit():
    rng = np.random.default_rng(0)
    wb = rng.normal(size=(6, 4))
    de = rng.normal(size=(6, 4))
    ortho = rng.normal(size=(6, 4))
    ortho -= (ortho.ravel() @ de.ravel()) / (de.ravel() @ de.ravel()) * de  # orthogonal to dE
    theta = math.radians(60)
    df = 0.8 * (-math.cos(theta) * de / np.linalg.norm(de) + math.sin(theta) * ortho / np.linalg.norm(ortho))
    E = rng.normal(size=(5, 4))
    got = reversion(
        {"attn2.to_k": tuple(torch.from_numpy(w) for w in (wb, wb + de, wb + de + df))}, torch.from_numpy(E)
    )
    assert got["attn2.to_k"]["reversion_cosine"] == pytest.approx(0.5)  # cos 60 degrees
    assert got["attn2.to_k"]["undone_fraction"] == pytest.approx(0.8 * 0.5 / np.linalg.norm(de))
    for measure, value in _reference(wb, wb + de, wb + de + df, E).items():
        assert got["attn2.to_k"][measure] == pytest.approx(value), measure
        assert got[TOTAL][measure] == pytest.approx(value), measure  # one layer: total is that layer


def test_moving_halfway_back_returns_keys_halfway():
    wb, de = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    got = reversion({"l": (wb, wb + de, wb + 0.5 * de)}, torch.randn(7, 3, dtype=torch.float64))["l"]
    assert got["reversion_cosine"] == pytest.approx(1.0) and got["undone_fraction"] == pytest.approx(0.5)
    assert got["kv_return"] == pytest.approx(0.5) and got["kv_remaining"] == pytest.approx(0.5)
    still = reversion({"l": (wb, wb + de, wb + de)}, torch.randn(7, 3, dtype=torch.float64))["l"]
    assert (
        math.isnan(still["reversion_cosine"]) and still["undone_fraction"] == 0 and still["kv_remaining"] == 1
    )


def test_layers_outside_the_key_value_maps_count_in_the_weight_measures_only():
    rng = np.random.default_rng(1)
    wb, de, df = (rng.normal(size=(6, 4)) for _ in range(3))
    cb, ce, cf = (rng.normal(size=(3, 2, 3, 3)) for _ in range(3))  # a conv weight ESD-u changed
    E = rng.normal(size=(5, 4))
    weights = {
        "attn2.to_k": tuple(torch.from_numpy(w) for w in (wb, wb + de, wb + de + df)),
        "conv1.weight": tuple(torch.from_numpy(w) for w in (cb, cb + ce, cb + ce + cf)),
    }
    got = reversion(weights, torch.from_numpy(E), kv_layers=["attn2.to_k"])
    flat = [
        np.concatenate([a.ravel(), b.ravel()])
        for a, b in ((wb, cb), (wb + de, cb + ce), (wb + de + df, cb + ce + cf))
    ]
    kv_ref = _reference(wb, wb + de, wb + de + df, E)
    de_all, df_all = flat[1] - flat[0], flat[2] - flat[1]
    assert got[TOTAL]["reversion_cosine"] == pytest.approx(
        float(np.dot(df_all, -de_all) / (np.linalg.norm(df_all) * np.linalg.norm(de_all)))
    )
    assert got[TOTAL]["erase_rel_norm"] == pytest.approx(np.linalg.norm(de_all) / np.linalg.norm(flat[0]))
    # the keys come from the key/value map alone; the conv layer has none
    assert got[TOTAL]["kv_return"] == pytest.approx(kv_ref["kv_return"])
    assert math.isnan(got["conv1.weight"]["kv_return"]) and math.isnan(got["conv1.weight"]["kv_remaining"])
    assert got["conv1.weight"]["undone_fraction"] == pytest.approx(
        float(np.dot(cf.ravel(), -ce.ravel()) / np.dot(ce.ravel(), ce.ravel()))
    )


def test_tiny_model_edits_measured_per_layer_and_in_total():
    """MACE's layers of a tiny SD: a hand-built erasure, then a hand-built fine-tune update."""
    pipe = build_random_pipeline("tiny", seed=0)
    base = kv_weights(pipe.unet)
    g = torch.Generator().manual_seed(1)
    d_e = {n: 0.05 * torch.randn(w.shape, generator=g, dtype=torch.float64) for n, w in base.items()}
    d_f = {
        n: -0.3 * d + 0.01 * torch.randn(d.shape, generator=g, dtype=torch.float64) for n, d in d_e.items()
    }
    apply_deltas(pipe.unet, {n: d.float() for n, d in d_e.items()})
    erased = kv_weights(pipe.unet)
    apply_deltas(pipe.unet, {n: d.float() for n, d in d_f.items()})
    tuned = kv_weights(pipe.unet)
    E = torch.randn(9, next(iter(base.values())).shape[1], generator=g, dtype=torch.float64)
    got = reversion({n: (base[n], erased[n], tuned[n]) for n in base}, E)
    assert set(got) == {*base, TOTAL} and all(set(m) == set(MEASURES) for m in got.values())
    for n in base:  # per layer, against the definitions on the weights the model actually holds
        want = _reference(base[n].numpy(), erased[n].numpy(), tuned[n].numpy(), E.numpy())
        assert got[n] == pytest.approx(want, rel=1e-6), n
    # The total concatenates the layers (not a mean of per-layer values).
    cat = {
        k: np.concatenate([w[n].numpy().ravel() for n in base])
        for k, w in (("b", base), ("e", erased), ("f", tuned))
    }
    cos = np.dot(cat["f"] - cat["e"], cat["b"] - cat["e"]) / (
        np.linalg.norm(cat["f"] - cat["e"]) * np.linalg.norm(cat["b"] - cat["e"])
    )
    assert got[TOTAL]["reversion_cosine"] == pytest.approx(cos, rel=1e-6)
    # dF = -0.3 dE + noise of std 0.01 against dE's 0.05: cos = 0.015 / sqrt(0.015^2 + 0.01^2) in expectation.
    assert got[TOTAL]["reversion_cosine"] == pytest.approx(0.015 / math.hypot(0.015, 0.01), abs=0.03)
    assert got[TOTAL]["undone_fraction"] == pytest.approx(0.3, abs=0.03)


def test_reversion_table_puts_measures_beside_resurgence():
    run = dict(task="identity_1", erase="default", ftset="random_identity", ftmethod="lora")
    rows = [
        dict(run, step=s, is_final=s == 4, layer=layer, measure=m, value=v)
        for s in (2, 4) for layer in ("down.attn2.to_k", TOTAL) for m, v in (("undone_fraction", s / 10), ("kv_return", 0.1))
    ]  # fmt: skip
    res = pd.DataFrame(
        [dict(run, domain="identity", seed=seed, step=4, metric=m, resurgence=r)
         for seed in (0, 1) for m, r in (("identity_acc", 0.1 + seed / 10), ("identity_prob", 0.3), ("clip_acc", 9.0))]
    )  # fmt: skip
    table = reversion_table(pd.DataFrame(rows), res)
    assert table["step"].tolist() == [2, 4] and table["undone_fraction"].tolist() == [0.2, 0.4]
    final = table[table["is_final"]].iloc[0]
    assert final["resurgence"] == pytest.approx(0.15) and final["resurgence_prob"] == pytest.approx(0.3)
    assert math.isnan(table[~table["is_final"]].iloc[0]["resurgence"])
