"""ESD: its two parameter sets, the loss against a direct computation on a tiny UNet, the batched partial
samples against a hand-run guided loop per row, their grouping, resume after a crash, and the dense
erasure's round trip."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from resurgence import study
from resurgence.config import ConfigError, load_config
from resurgence.erasure import esd
from resurgence.erasure.artifact import DENSE_FILE, ConceptSpec, apply_erasure, load_report, save_erasure
from resurgence.mace.refine import encode_prompts
from resurgence.models.pipeline import build_random_pipeline

ANN = ConceptSpec("Ann X", ("a photo of Ann X",), ("Ann X", "Annie"))


def test_the_two_variants_train_the_cross_attention_and_everything_else(pipe):
    x = esd.esd_parameters(pipe.unet, "esd-x")
    u = esd.esd_parameters(pipe.unet, "esd-u")
    assert x and u and not set(x) & set(u)
    assert all(".attn2." in n for n in x) and not any(".attn2." in n for n in u)
    assert {n.rsplit(".", 2)[-2] for n in x} >= {"to_q", "to_k", "to_v", "0"}  # to_out.0 too
    every = {
        f"{m}.{p}"
        for m, mod in pipe.unet.named_modules()
        if isinstance(mod, torch.nn.Linear | torch.nn.Conv2d)
        for p, _ in mod.named_parameters(recurse=False)
    }
    assert set(x) | set(u) == every
    assert any(n.endswith("conv_in.weight") for n in u) and any(n.endswith(".bias") for n in u)
    with pytest.raises(ValueError, match="esd-x"):
        esd.esd_parameters(pipe.unet, "esd-a")


def test_step_loss_is_the_mse_to_the_negatively_guided_noise(pipe):
    unet = pipe.unet
    trained = build_random_pipeline("tiny", seed=1, tokenizer_dir=None).unet  # different weights
    g = torch.Generator().manual_seed(0)
    s = unet.config.sample_size
    x = torch.randn(2, unet.config.in_channels, s, s, generator=g)
    dim = unet.config.cross_attention_dim
    cond, null = torch.randn(2, 7, dim, generator=g), torch.randn(1, 7, dim, generator=g)
    t = torch.tensor([321, 40])
    eta = 2.0
    e_p, e_0 = esd.frozen_noise(unet, x, t, cond, null)
    with torch.no_grad():
        pred = trained(x[1:], t[1:], cond[1:]).sample
        direct_p, direct_0 = unet(x[1:], t[1:], cond[1:]).sample, unet(x[1:], t[1:], null).sample
    torch.testing.assert_close(e_p[1:], direct_p, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(e_0[1:], direct_0, rtol=1e-4, atol=1e-5)
    got = esd.esd_loss(pred, e_p[1:], e_0[1:], eta)
    # (1 - eta) e_p + eta e_0 is e_p - eta (e_p - e_0) written the other way round
    direct = ((pred - ((1 - eta) * direct_p + eta * direct_0)) ** 2).sum() / pred.numel()
    assert got.item() == pytest.approx(direct.item(), rel=1e-4)


def test_partial_samples_are_each_rows_k_guided_steps_of_the_pipelines_schedule(pipe):
    """One batched pipeline run gives every row the latents of its own k steps, as a hand-run guided loop
    of the scheduler does for that row alone."""
    cfg = esd.ESDConfig(num_inference_steps=6, guidance_scale=3.0)
    states = encode_prompts(pipe, ["Ann X", "a photo of Ann X", "Annie"])
    null = encode_prompts(pipe, [""])
    ks, seeds = [3, 0, 1], [5, 6, 7]
    x, t = esd.partial_samples(pipe, states, null, ks, cfg, seeds)
    sched = pipe.scheduler
    s = pipe.unet.config.sample_size
    for row, (k, seed) in enumerate(zip(ks, seeds, strict=True)):
        sched.set_timesteps(6)
        lat = torch.randn(
            1, pipe.unet.config.in_channels, s, s, generator=torch.Generator().manual_seed(seed)
        )
        lat = lat * sched.init_noise_sigma
        cond = states[row : row + 1]
        with torch.no_grad():
            for step in sched.timesteps[:k]:
                inp = sched.scale_model_input(torch.cat([lat, lat]), step)
                e_u, e_c = pipe.unet(inp, step, torch.cat([null, cond])).sample.chunk(2)
                lat = sched.step(e_u + 3.0 * (e_c - e_u), step, lat).prev_sample
        assert t[row] == sched.timesteps[k]
        torch.testing.assert_close(x[row : row + 1], lat, rtol=1e-4, atol=1e-5)


def test_sample_groups_hold_every_iteration_once_in_order_of_k():
    cfg = esd.ESDConfig(iterations=23, num_inference_steps=50, seed=3)
    draws = esd.draw_iterations(cfg, 4)
    assert len(draws) == 23 and {j for j, _, _ in draws} <= {0, 1, 2, 3}
    groups = esd.sample_groups(draws, 5)
    assert [len(g) for g in groups] == [5, 5, 5, 5, 3]
    assert sorted(i for g in groups for i in g) == list(range(23))
    ks = [draws[i][1] for g in groups for i in g]
    assert ks == sorted(ks) and len(set(ks)) > 5
    assert esd.draw_iterations(cfg, 4) == draws  # a function of the seed: a resumed run draws the same


def test_esd_trains_resumes_exactly_and_round_trips_as_a_dense_erasure(pipe, tokdir, tmp_path, monkeypatch):
    torch.set_num_threads(2)
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    cfg = esd.ESDConfig(iterations=4, num_inference_steps=4, lr=1e-3, checkpoint_every=2, sample_batch=1)
    ref = esd.erase_concepts(pipe, [ANN], cfg, "cpu", state_dir=tmp_path / "ref", model_key="m")
    assert set(ref.dense) == set(esd.esd_parameters(pipe.unet, "esd-x")) and ref.deltas == {}
    assert all(d.abs().max() > 0 for n, d in ref.dense.items() if n.endswith("weight"))
    assert all(torch.equal(p, before[n]) for n, p in pipe.unet.named_parameters())  # left as it was
    assert len(ref.report["losses"]) == 4 and ref.report["resumed_from"] is None

    calls = {"n": 0}
    real = esd.esd_loss

    def crash_at_third(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*a, **kw)

    monkeypatch.setattr(esd, "esd_loss", crash_at_third)
    with pytest.raises(RuntimeError, match="killed"):
        esd.erase_concepts(pipe, [ANN], cfg, "cpu", state_dir=tmp_path / "res", model_key="m")
    monkeypatch.setattr(esd, "esd_loss", real)
    res = esd.erase_concepts(pipe, [ANN], cfg, "cpu", state_dir=tmp_path / "res", model_key="m")
    assert res.report["resumed_from"] == 2 and res.report["losses"] == ref.report["losses"]
    assert all(torch.equal(res.dense[n], ref.dense[n]) for n in ref.dense)
    # the frozen model's samples in other groups: the same training up to float rounding (Adam's
    # normalised steps carry it into a few near-zero elements, so the measure is each delta's norm)
    grouped = esd.erase_concepts(pipe, [ANN], dataclasses.replace(cfg, sample_batch=3), "cpu")
    assert grouped.report["losses"] == pytest.approx(ref.report["losses"], rel=1e-4)
    for n in ref.dense:
        assert (grouped.dense[n] - ref.dense[n]).norm() <= 1e-3 * ref.dense[n].norm()
    # another model key: the old state is not resumed
    other = esd.erase_concepts(pipe, [ANN], cfg, "cpu", state_dir=tmp_path / "res", model_key="other")
    assert other.report["resumed_from"] is None

    out = save_erasure(ref, tmp_path / "erasure")
    assert (out / DENSE_FILE).is_file() and load_report(out)["dense_file"] == DENSE_FILE
    fresh = build_random_pipeline("tiny", seed=0, tokenizer_dir=tokdir)
    assert apply_erasure(fresh, out) == {}
    for n, p in fresh.unet.named_parameters():
        expected = before[n] + ref.dense[n] if n in ref.dense else before[n]
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)


def test_config_and_study_specs():
    with pytest.raises(ValueError, match=r"unknown esd settings \['lamb'\].*allowed.*negative_guidance"):
        esd.ESDConfig.from_dict({"lamb": 1})
    with pytest.raises(ValueError, match=r"train_method must be one of \['esd-x', 'esd-u'\]"):
        esd.ESDConfig(train_method="esd-all")
    config = load_config(["config.yaml"])
    for erase, method in (("esd_x", "esd-x"), ("esd_u", "esd-u")):
        spec = study.erase_spec(config, "object_ship", erase)
        assert spec["method"] == "esd" and spec["esd"]["train_method"] == method
        assert spec["concepts"] == [{"name": "ship"}]
        # ESD has no mapping concept; its reversion is probed on the rows MACE's default erasure maps.
        mace = study.erase_spec(config, "object_ship", "default")["concepts"]
        assert study.probe_mappings(config, "object_ship", erase) == {c["name"]: c["mapping"] for c in mace}
    bad = {**config, "erase_variants": {**config["erase_variants"], "x": {"method": "esd", "iterations": 0}}}
    with pytest.raises(ConfigError, match=r"ESD settings.*erase_variants.x.*iterations must be >= 1"):
        study.erase_spec(bad, "identity_10", "x")
