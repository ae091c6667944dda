"""UCE: Eq. 7 against the reference's own formula and a least-squares solve; the edit on a tiny SD;
its place in the study (specs, runs naming a method, config errors)."""

from __future__ import annotations

import pytest
import torch

from resurgence import study
from resurgence.config import ConfigError, load_config
from resurgence.erasure import uce
from resurgence.erasure.artifact import ConceptSpec, apply_erasure, kv_module_names, load_report, save_erasure
from resurgence.mace.refine import encode_prompts
from resurgence.models.pipeline import build_random_pipeline


def problem(seed: int = 0, dim: int = 12, n: int = 4, m: int = 6):
    g = torch.Generator().manual_seed(seed)
    W = [
        torch.randn(7, dim, generator=g, dtype=torch.float64),
        torch.randn(5, dim, generator=g, dtype=torch.float64),
    ]
    C, G = (
        torch.randn(n, dim, generator=g, dtype=torch.float64),
        torch.randn(n, dim, generator=g, dtype=torch.float64),
    )
    return W, C, G, torch.randn(m, dim, generator=g, dtype=torch.float64)


def reference_formula(w, C, G, P, s_e, s_p, lamb):
    """The authors' loop (trainscripts/uce_sd_erase.py): accumulate mat1/mat2 per concept, then invert."""
    mat1 = lamb * w.clone()
    mat2 = lamb * torch.eye(w.shape[1], dtype=w.dtype)
    for c, g in zip(C, G, strict=True):
        v_star = w @ g
        mat1 += s_e * torch.outer(v_star, c)
        mat2 += s_e * torch.outer(c, c)
    for p in P:
        mat1 += s_p * torch.outer(w @ p, p)
        mat2 += s_p * torch.outer(p, p)
    return mat1 @ torch.inverse(mat2)


@pytest.mark.parametrize("s_e,s_p,lamb", [(1.0, 1.0, 0.5), (3.0, 0.2, 0.05), (1.0, 0.0, 1.0)])
def test_uce_weights_match_the_reference_formula_and_a_least_squares_solve(s_e, s_p, lamb):
    W, C, G, P = problem()
    cfg = uce.UCEConfig(erase_scale=s_e, preserve_scale=s_p, lamb=lamb)
    got = uce.uce_weights(W, C, G, P, cfg)
    for w, w1 in zip(W, got, strict=True):
        torch.testing.assert_close(w1, reference_formula(w, C, G, P, s_e, s_p, lamb), rtol=1e-9, atol=1e-9)
        # the objective as one stacked least-squares problem: rows of [√s_e C; √s_p P; √lamb I] W'^T
        A = torch.cat([s_e**0.5 * C, s_p**0.5 * P, lamb**0.5 * torch.eye(w.shape[1], dtype=w.dtype)])
        B = torch.cat([s_e**0.5 * G @ w.T, s_p**0.5 * P @ w.T, lamb**0.5 * w.T])
        torch.testing.assert_close(w1, torch.linalg.lstsq(A, B).solution.T, rtol=1e-8, atol=1e-8)


def test_a_strong_edit_maps_the_erased_rows_onto_the_guides_values_and_keeps_the_preserved():
    W, C, G, P = problem(n=3, m=4)
    (w1, _) = uce.uce_weights(W, C, G, P, uce.UCEConfig(erase_scale=1e4, preserve_scale=1e4, lamb=1e-3))
    w = W[0]
    assert torch.linalg.norm(C @ w1.T - G @ w.T) < 1e-3 * torch.linalg.norm(G @ w.T)
    assert torch.linalg.norm(P @ (w1 - w).T) < 1e-3 * torch.linalg.norm(P @ w.T)
    # with nothing to erase toward a different value, the edit is the identity
    (same, _) = uce.uce_weights(W, C, C, P, uce.UCEConfig())
    torch.testing.assert_close(same, w, rtol=1e-10, atol=1e-10)


def test_config_names_bad_keys_and_values():
    with pytest.raises(ValueError, match=r"unknown uce settings \['lambda1'\].*allowed.*erase_scale"):
        uce.UCEConfig.from_dict({"lambda1": 1.0})
    with pytest.raises(ValueError, match="lamb must be >= 0"):
        uce.UCEConfig(lamb=-1)
    with pytest.raises(ValueError, match="erase_scale must be > 0"):
        uce.UCEConfig(erase_scale=0)
    with pytest.raises(TypeError, match="sequence"):
        uce.UCEConfig(preserve="Ann X")
    assert uce.UCEConfig.from_dict(uce.UCEConfig(preserve=("a",)).to_dict()) == uce.UCEConfig(preserve=("a",))


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    p = build_random_pipeline("tiny", seed=0, tokenizer_dir=tmp_path_factory.mktemp("tok"))
    p.set_progress_bar_config(disable=True)
    return p


def test_last_token_states_are_the_states_before_eos(pipe):
    texts = ["Ann X", "a photo of Ann X", ""]
    got = uce.last_token_states(pipe, texts)
    hidden = encode_prompts(pipe, texts)
    tok = pipe.tokenizer
    padded = tok(texts, padding="max_length", max_length=tok.model_max_length).input_ids
    for i in range(len(texts)):
        eos = padded[i].index(tok.eos_token_id)  # the first <eos>; the token before it is the text's last
        torch.testing.assert_close(got[i], hidden[i, eos - 1])
    torch.testing.assert_close(got[2], hidden[2, 0])  # the empty text: its <bos> state


def test_uce_on_a_tiny_sd_edits_the_key_values_and_round_trips_as_an_erasure(pipe, tmp_path):
    before = {n: pipe.unet.get_submodule(n).weight.detach().clone() for n in kv_module_names(pipe.unet)}
    ann = ConceptSpec("Ann X", ("a photo of Ann X",), ("Ann X", "Annie"))
    cfg = uce.UCEConfig(erase_scale=1e3, preserve_scale=1e3, lamb=0.1, preserve=("Bob Y",))
    erasure = uce.erase_concepts(pipe, [ann], {"Ann X": "a person"}, cfg, device="cpu")
    assert set(erasure.deltas) == set(before) and all(d.abs().max() > 0 for d in erasure.deltas.values())
    for n, w in before.items():  # the pipeline is left as it was
        assert torch.equal(pipe.unet.get_submodule(n).weight, w)
    report = erasure.report
    assert report["method"] == "uce" and report["n_erase_rows"] == 2 and report["n_preserve_rows"] == 1
    for n, r in report["residual_rel"].items():  # both phrases now give the guide's keys/values
        assert r["erase"] < 0.02 and r["preserve"] < 0.02, n
    C = uce.last_token_states(pipe, ["Ann X", "Annie"]).double()
    G = uce.last_token_states(pipe, ["a person"]).double()
    name = kv_module_names(pipe.unet)[0]
    w, d = before[name].double(), erasure.deltas[name].double()
    assert torch.linalg.norm(C @ (w + d).T - G @ w.T) < 0.05 * torch.linalg.norm(C @ w.T - G @ w.T)
    out = save_erasure(erasure, tmp_path / "uce")
    assert load_report(out)["method"] == "uce"
    applied = apply_erasure(pipe, out)
    try:
        for n, w in before.items():
            torch.testing.assert_close(
                pipe.unet.get_submodule(n).weight, w + applied[n], rtol=1e-5, atol=1e-6
            )
    finally:
        for n, w in before.items():
            pipe.unet.get_submodule(n).weight.data.copy_(w)
    with pytest.raises(ValueError, match=r"no guide phrase for \['Ann X'\]"):
        uce.erase_concepts(pipe, [ann], {}, cfg, device="cpu")


@pytest.fixture(scope="module")
def config():
    return load_config(["config.yaml"])


def test_study_specs_a_uce_erasure_with_the_tasks_mapping_and_retained_names(config):
    spec = study.erase_spec(config, "identity_10", "uce")
    assert spec["method"] == "uce" and "mace" not in spec
    mace = study.erase_spec(config, "identity_10", "default")
    assert spec["concepts"] == mace["concepts"]  # the same guide (mapping) per concept as MACE's
    assert spec["uce"]["lamb"] == 0.5 and spec["uce"]["erase_scale"] == spec["uce"]["preserve_scale"] == 1.0
    erased_anywhere = {n for t in config["tasks"].values() for n in t["erase"]}
    in_ftsets = {n for fs in config["finetune_sets"].values() for n in fs.get("concepts", [])}
    preserved = set(spec["uce"]["preserve"])
    assert preserved and not preserved & (erased_anywhere | in_ftsets)
    # MACE's in-domain cache holds the prompts of exactly the concepts whose names UCE preserves, and the
    # unconditional prompt (erase_defaults.*.preserve_unconditional)
    concept_prompts = [p for p in mace["mace"]["domain_preserve"] if p != study.unconditional_prompt(config)]
    assert len(concept_prompts) == len(mace["mace"]["domain_preserve"]) - 1
    assert all(any(n in p for n in preserved) for p in concept_prompts)
    cfg = {
        **config,
        "erase_variants": {**config["erase_variants"], "u0": {"method": "uce", "preserve": "none"}},
    }
    assert study.erase_spec(cfg, "object_ship", "u0")["uce"]["preserve"] == []


def test_runs_name_methods_and_bad_methods_are_named(config):
    runs = study.experiment_runs(config, "methods")
    assert study.Run(task="identity_10", erase="uce", ftset="random_identity") in runs
    assert {study.erase_method(config, r.task, r.erase) for r in runs} == {"mace", "uce", "esd"}
    assert {r.task for r in runs if r.erase == "uce"} == {
        r["task"] for r in config["experiments"]["fig5"]["runs"]
    }
    bad = {
        **config,
        "experiments": {
            "methods": {"runs": [{"task": "identity_10", "erase": "lambda1_0", "method": "uce"}]}
        },
    }
    with pytest.raises(ConfigError, match=r"experiments.methods.runs\[0\].method.*'lambda1_0'.*'mace'"):
        study.experiment_runs(bad, "methods")
    bad = {**config, "erase_variants": {**config["erase_variants"], "x": {"method": "salun"}}}
    with pytest.raises(ConfigError, match=r"erase_variants.x.method.*'salun'.*allowed values.*uce.*esd"):
        study.erase_spec(bad, "identity_10", "x")
    bad = {
        **config,
        "erase_variants": {**config["erase_variants"], "x": {"method": "uce", "preserve": "all"}},
    }
    with pytest.raises(ConfigError, match="preserve.*'all'.*allowed values: auto, auto_with_finetune, none"):
        study.erase_spec(bad, "identity_10", "x")
    bad = {**config, "erase_variants": {**config["erase_variants"], "x": {"method": "uce", "lambda1": 0.1}}}
    with pytest.raises(ConfigError, match=r"erase_variants.x.*unknown uce settings \['lambda1'\]"):
        study.erase_spec(bad, "identity_10", "x")
