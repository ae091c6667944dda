"""Fine-tune sets, tercile selection and LoRA/full fine-tuning on the tiny random pipeline."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from resurgence import layout
from resurgence.finetune import train
from resurgence.finetune.config import FinetuneConfig
from resurgence.finetune.data import (
    FinetuneImageDataset,
    build_finetune_set,
    collate,
    select_tercile_concepts,
)
from resurgence.finetune.train import finetune, list_checkpoints, load_finetuned
from resurgence.generate.engine import GenerationConfig
from resurgence.models.pipeline import build_random_pipeline

GEN = GenerationConfig(steps=2, batch_size=4)


@pytest.fixture(scope="module")
def base_pipe():
    pipe = build_random_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ft_set(base_pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("ftset")
    build_finetune_set(
        copy.deepcopy(base_pipe),
        ["a photo of a cat", "a photo of a dog"],
        2,
        7,
        GEN,
        out,
        concepts=["cat", "dog"],
        progress=False,
        extra_manifest={"spec": {"kind": "random"}},
    )
    return out


def _cfg(**kw) -> FinetuneConfig:
    base = dict(steps=6, learning_rate=1e-3, batch_size=2, checkpoint_every=3, seed=0)
    return FinetuneConfig(**{**base, **kw})


# --- fine-tune sets -------------------------------------------------------------------------


def test_build_finetune_set_and_read_back(base_pipe, ft_set):
    rows = [json.loads(line) for line in (ft_set / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and len(list((ft_set / "images").glob("*.png"))) == 4
    assert [r["concept"] for r in rows] == ["cat", "cat", "dog", "dog"]
    assert all(r["caption"] == r["prompt"] == r["text"] for r in rows)
    assert len({r["seed"] for r in rows}) == 4
    manifest = json.loads((ft_set / "manifest.json").read_text())
    assert (
        manifest["seed"] == 7
        and manifest["n_images"] == 4
        and manifest["images_per_concept"] == {"cat": 2, "dog": 2}
    )
    assert manifest["generation"]["steps"] == 2 and manifest["spec"] == {"kind": "random"}

    ds = FinetuneImageDataset(ft_set, base_pipe.tokenizer, resolution=16)
    assert len(ds) == 4
    ex = ds[2]
    assert ex["pixel_values"].shape == (3, 16, 16) and ex["caption"] == "a photo of a dog"
    assert ex["pixel_values"].min() >= -1.0 and ex["pixel_values"].max() <= 1.0
    png = np.asarray(Image.open(ft_set / rows[2]["file_name"]), dtype=np.float32)
    assert torch.allclose(ex["pixel_values"], torch.from_numpy(png).permute(2, 0, 1) / 127.5 - 1)
    assert ex["input_ids"].shape == (base_pipe.tokenizer.model_max_length,)
    assert collate([ds[0], ds[1]])["pixel_values"].shape == (2, 3, 16, 16)
    # Flip off by default: reading twice gives the same tensor.
    assert torch.equal(ds[0]["pixel_values"], ds[0]["pixel_values"])


def test_tercile_selection_matches_numpy_percentiles():
    rng = np.random.default_rng(3)
    cands = [f"c{i}" for i in range(30)] + ["Erased A"]
    erased = ["erased a", "erased b", "erased c"]
    sim = rng.uniform(0.1, 0.9, size=(30, 3))
    table = {c: sim[i] for i, c in enumerate(cands[:30])}
    seen = {}

    def similarity(cs, es):
        seen["args"] = (list(cs), list(es))
        return torch.tensor(np.stack([table[c] for c in cs]))

    out = select_tercile_concepts(cands, erased, similarity, n_per_tercile=4, seed=11)
    assert "Erased A" not in seen["args"][0]  # erased concepts are never fine-tuning candidates

    score = sim.min(axis=1)  # min over erased concepts, as in App. C.2
    q1, q2 = np.percentile(score, [100 / 3, 200 / 3])
    expected = {
        1: {c for c, s in zip(cands, score, strict=False) if s <= q1},
        2: {c for c, s in zip(cands, score, strict=False) if q1 < s <= q2},
        3: {c for c, s in zip(cands, score, strict=False) if s > q2},
    }
    assert [len(expected[t]) for t in (1, 2, 3)] == [10, 10, 10]
    order = [cands[i] for i in np.argsort(score)]
    assert expected[1] == set(order[:10]) and expected[3] == set(order[20:])
    for t in (1, 2, 3):
        assert set(out["members"][t]) == expected[t]
        assert len(out["terciles"][t]) == 4 and set(out["terciles"][t]) <= expected[t]
    assert out["intervals"][1][0] == pytest.approx(score.min()) and out["intervals"][3][1] == pytest.approx(
        score.max()
    )
    assert out["intervals"][1][1] == pytest.approx(q1) and out["intervals"][2][1] == pytest.approx(q2)
    assert out["scores"]["c5"] == pytest.approx(score[5])
    again = select_tercile_concepts(cands, erased, similarity, n_per_tercile=4, seed=11)
    assert again["terciles"] == out["terciles"]
    other = select_tercile_concepts(cands, erased, similarity, n_per_tercile=4, seed=12)
    assert other["terciles"] != out["terciles"]
    with pytest.raises(ValueError, match="cannot fill"):
        select_tercile_concepts(cands, erased, similarity, n_per_tercile=11, seed=0)


# --- config -----------------------------------------------------------------------------------


def test_config_from_dict_rejects_unknown_and_missing_keys():
    d = dict(
        steps=10,
        learning_rate=1e-4,
        batch_size=1,
        checkpoint_every=5,
        seed=0,
        target_modules=["to_k", "to_v"],
    )
    cfg = FinetuneConfig.from_dict(d)
    assert cfg.target_modules == ("to_k", "to_v") and cfg.lora_alpha == 4.0
    with pytest.raises(ValueError, match="lerning_rate"):
        FinetuneConfig.from_dict({**d, "lerning_rate": 1.0})
    with pytest.raises(ValueError, match="learning_rate"):
        FinetuneConfig.from_dict({k: v for k, v in d.items() if k != "learning_rate"})
    # the defaults, written only here: seed 0, and without checkpoint_every only the final weights
    bare = FinetuneConfig.from_dict({k: v for k, v in d.items() if k not in ("seed", "checkpoint_every")})
    assert (bare.seed, bare.checkpoint_every) == (0, 10)
    with pytest.raises(ValueError, match="method"):
        FinetuneConfig.from_dict({**d, "method": "dora"})


# --- training ---------------------------------------------------------------------------------


def _fixed_loss(pipe, ds_dir) -> float:
    """Training loss over the whole set with fixed noise/timesteps (comparable before vs after)."""
    ds = FinetuneImageDataset(ds_dir, pipe.tokenizer, 16)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    with torch.no_grad():
        batch = train.encode_batch(pipe, collate([ds[i] for i in range(len(ds))]), "cpu")
        return train._loss(pipe, sched, batch, torch.Generator().manual_seed(123), "cpu").item()


def _lora_free_state(unet) -> dict[str, torch.Tensor]:
    return {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}


def test_lora_trains_only_adapters_and_lowers_loss(base_pipe, ft_set, tmp_path):
    pipe = copy.deepcopy(base_pipe)
    before = _fixed_loss(pipe, ft_set)
    log = finetune(
        pipe, ft_set, _cfg(steps=8, learning_rate=1e-2, checkpoint_every=4), tmp_path, progress=False
    )
    assert len(log["losses"]) == 8 and log["seed"] == 0 and log["n_trainable_params"] > 0
    assert _fixed_loss(pipe, ft_set) < before
    base_state = base_pipe.unet.state_dict()
    for k, v in _lora_free_state(pipe.unet).items():  # base weights untouched
        assert torch.equal(v, base_state[k]), k
    lora_b = [v for k, v in pipe.unet.state_dict().items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 8]
    assert (tmp_path / "final" / train.LORA_WEIGHTS).is_file()
    saved = json.loads((tmp_path / "train_log.json").read_text())
    assert (
        saved["losses"] == log["losses"]
        and saved["config"]["method"] == "lora"
        and saved["peak_memory_bytes"] > 0
        and 0 < saved["loop_s"] < saved["wall_time_s"]  # the steps alone; the whole run also saves
    )

    # load_finetuned on a fresh base model reproduces the trained model, with LoRA fused away.
    fresh = load_finetuned(copy.deepcopy(base_pipe), tmp_path / "final")
    assert not any("lora_" in k for k in fresh.unet.state_dict())
    x, enc = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.no_grad():
        want = pipe.unet(x, 500, enc).sample
        got = fresh.unet(x, 500, enc).sample
        untrained = base_pipe.unet(x, 500, enc).sample
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(untrained, want, atol=1e-4)


def test_lora_steps_skip_peft_input_casts_and_compute_the_same(base_pipe):
    """Under bf16 autocast, the training loop's context turns peft's cast of each adapter's input to fp32
    off: the same loss and LoRA gradients bit for bit, with fewer copy ops per step (forward and backward)."""
    from collections import Counter

    pipe = copy.deepcopy(base_pipe)
    cfg = _cfg(mixed_precision="bf16")
    device = torch.device("cpu")
    params = train._setup_trainable(pipe, cfg, device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g).to(torch.bfloat16)
    enc = torch.randn(2, 77, 32, generator=g).to(torch.bfloat16)
    t = torch.tensor([10, 700])

    def step(context):
        for p in params:
            p.grad = None
        with torch.profiler.profile() as prof:
            with context:
                loss = pipe.unet(x, t, enc, return_dict=False)[0].float().pow(2).mean()
            loss.backward()
        ops = Counter(e.name for e in prof.events())
        copies = ops["aten::_to_copy"] + sum(n for k, n in ops.items() if k.startswith("ToCopyBackward"))
        return loss.detach(), [p.grad.clone() for p in params], copies

    plain = step(torch.autocast("cpu", dtype=torch.bfloat16))
    with train.adapter_input_casts_off(pipe, cfg):
        ours = step(torch.autocast("cpu", dtype=torch.bfloat16))
    assert torch.equal(ours[0], plain[0])
    assert all(torch.equal(a, b) for a, b in zip(ours[1], plain[1], strict=True))
    assert ours[2] < plain[2], (ours[2], plain[2])
    assert step(torch.autocast("cpu", dtype=torch.bfloat16))[2] == plain[2]  # peft's casts back after it


def test_full_finetune_changes_unet_only(base_pipe, ft_set, tmp_path):
    pipe = copy.deepcopy(base_pipe)
    before = _fixed_loss(pipe, ft_set)
    finetune(
        pipe,
        ft_set,
        _cfg(method="full", steps=4, learning_rate=1e-3, checkpoint_every=2),
        tmp_path,
        progress=False,
    )
    assert _fixed_loss(pipe, ft_set) < before
    base_unet = base_pipe.unet.state_dict()
    changed = [k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, base_unet[k])]
    assert len(changed) > 0.9 * len(base_unet)
    for name in ("vae", "text_encoder"):
        ref = getattr(base_pipe, name).state_dict()
        assert all(torch.equal(v, ref[k]) for k, v in getattr(pipe, name).state_dict().items()), name
    fresh = load_finetuned(copy.deepcopy(base_pipe), tmp_path / "final")
    trained = pipe.unet.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in fresh.unet.state_dict().items())


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resume_equals_uninterrupted(base_pipe, ft_set, tmp_path, method):
    cfg = _cfg(method=method, steps=4, checkpoint_every=2)
    whole = copy.deepcopy(base_pipe)
    log_whole = finetune(whole, ft_set, cfg, tmp_path / "whole", progress=False)

    # Crash after the step-2 checkpoint: a 2-step run, then lose its final output, then a fresh process resumes.
    first = copy.deepcopy(base_pipe)
    finetune(
        first, ft_set, _cfg(method=method, steps=2, checkpoint_every=2), tmp_path / "resumed", progress=False
    )
    shutil.rmtree(tmp_path / "resumed" / "final")
    resumed = copy.deepcopy(base_pipe)
    log_resumed = finetune(resumed, ft_set, cfg, tmp_path / "resumed", progress=False)
    assert log_resumed["resumed_from"].endswith("step-000002")
    assert log_resumed["losses"] == log_whole["losses"]
    w, r = whole.unet.state_dict(), resumed.unet.state_dict()
    assert w.keys() == r.keys() and all(torch.equal(w[k], r[k]) for k in w)
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed")] == [2, 4]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_compiled_step_trains_what_the_eager_step_trains(base_pipe, ft_set, tmp_path, monkeypatch, method):
    """``compile`` traces the UNet's training step (dynamo and AOT autograd; inductor's CPU code generation
    swapped for eager kernels, which would take minutes here) and trains the same model as eager, saved
    under the plain UNet's keys; the pipe keeps its plain UNet."""
    from torch._dynamo.backends.common import aot_autograd

    real = torch.compile
    graphs: list[str] = []

    def counted(kind):
        def compiler(gm, example_inputs):
            graphs.append(kind)
            return gm.forward

        return compiler

    def traced(module, mode):
        assert mode == "default"
        return real(
            module, backend=aot_autograd(fw_compiler=counted("forward"), bw_compiler=counted("backward"))
        )

    monkeypatch.setattr(train.torch, "compile", traced)
    runs = {}
    for mode in ("none", "default"):
        pipe = copy.deepcopy(base_pipe)
        log = finetune(
            pipe, ft_set, _cfg(method=method, steps=3, compile=mode), tmp_path / mode, progress=False
        )
        assert type(pipe.unet).__name__ == "UNet2DConditionModel"
        runs[mode] = (log["losses"], pipe.unet.state_dict(), log["config"]["compile"])
    assert {"forward", "backward"} <= set(graphs), graphs  # the step ran through the traced graphs
    (eager, w_eager, c_eager), (comp, w_comp, c_comp) = runs["none"], runs["default"]
    assert (c_eager, c_comp) == ("none", "default")
    np.testing.assert_allclose(comp, eager, rtol=1e-5)
    assert w_comp.keys() == w_eager.keys()
    for k, v in w_eager.items():
        assert torch.allclose(w_comp[k], v, rtol=1e-4, atol=1e-6), k
    with pytest.raises(ValueError, match="compile must be one of"):
        _cfg(compile="fast")


@pytest.fixture(scope="module")
def other_set(base_pipe, tmp_path_factory):
    """A fine-tune set of other images (another seed): what a rerun of the set stage might write."""
    out = tmp_path_factory.mktemp("ftset_other")
    build_finetune_set(
        copy.deepcopy(base_pipe), ["a photo of a cat", "a photo of a dog"], 2, 8, GEN, out, progress=False
    )
    return out


def _edited(pipe):
    """The pipeline with other cross-attention keys: what a changed erasure hands the fine-tune."""
    pipe = copy.deepcopy(pipe)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "attn2.to_k" in name:
                p.mul_(1.5)
    return pipe


def _lora(pipe) -> dict[str, torch.Tensor]:
    return {k: v for k, v in pipe.unet.state_dict().items() if "lora_" in k}


@pytest.mark.parametrize("change", ["learning_rate", "model", "data"])
def test_checkpoints_of_other_inputs_are_discarded(base_pipe, ft_set, other_set, tmp_path, change, caplog):
    """A rerun after a change upstream (erased model, fine-tune set) or of the config retrains from step 0
    and ends where a clean run ends, never where the stale checkpoints lead."""
    cfg = _cfg(steps=4, checkpoint_every=2)
    old = finetune(
        copy.deepcopy(base_pipe), ft_set, cfg, tmp_path / "run", progress=False, model_key="erased v1"
    )
    new_cfg = _cfg(steps=4, checkpoint_every=2, learning_rate=5e-4) if change == "learning_rate" else cfg
    new_pipe, new_key = (_edited(base_pipe), "erased v2") if change == "model" else (base_pipe, "erased v1")
    new_set = other_set if change == "data" else ft_set

    clean = copy.deepcopy(new_pipe)
    finetune(clean, new_set, new_cfg, tmp_path / "clean", progress=False, model_key=new_key)
    rerun = copy.deepcopy(new_pipe)
    log = finetune(rerun, new_set, new_cfg, tmp_path / "run", progress=False, model_key=new_key)

    assert log["resumed_from"] is None and len(log["losses"]) == 4 and log["losses"] != old["losses"]
    assert {"learning_rate": "config.learning_rate", "model": "model", "data": "data"}[change] in caplog.text
    assert "discarding stale fine-tune checkpoints" in caplog.text
    want, got = _lora(clean), _lora(rerun)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2, 4]


def test_checkpoints_without_a_key_are_discarded(base_pipe, ft_set, tmp_path):
    finetune(copy.deepcopy(base_pipe), ft_set, _cfg(steps=2, checkpoint_every=2), tmp_path, progress=False)
    (tmp_path / layout.CHECKPOINTS / "resume_key.json").unlink()  # state written before checkpoints had keys
    log = finetune(
        copy.deepcopy(base_pipe), ft_set, _cfg(steps=4, checkpoint_every=2), tmp_path, progress=False
    )
    assert log["resumed_from"] is None


def _counting(module, method: str, calls: list[int]):
    """Count ``module.method``'s calls, leaving what it computes as it is."""
    inner = getattr(module, method)

    def counted(*args, **kwargs):
        calls.append(len(args[0]))
        return inner(*args, **kwargs)

    setattr(module, method, counted)


@pytest.mark.parametrize("train_text", [False, True])
def test_encoded_set_equals_encoding_every_batch(base_pipe, ft_set, train_text):
    """Cached encodings are what encoding each batch gives, are computed once per example whatever order the
    examples are drawn in (so a resumed run equals an uninterrupted one), and text states are recomputed at
    every draw while the text encoder trains."""
    pipe = copy.deepcopy(base_pipe)
    pipe.text_encoder.requires_grad_(False)
    if train_text:
        next(pipe.text_encoder.parameters()).requires_grad_(True)
    ds = FinetuneImageDataset(ft_set, pipe.tokenizer, 16)
    vae_calls, te_calls = [], []
    _counting(pipe.vae, "encode", vae_calls)
    _counting(pipe.text_encoder, "forward", te_calls)
    draws = [[3, 0, 2], [1, 1], [2, 3, 0, 1], [0]]
    encoded = train.EncodedSet(pipe, ds, "cpu", chunk=3)  # two chunks, [0, 1, 2] and [3]
    got = [encoded.batch(idx) for idx in draws]
    assert sorted(vae_calls) == [1, 3]  # each chunk once, however often its examples are drawn
    assert te_calls == ([3, 2, 4, 1] if train_text else [2])  # frozen: the set's 2 captions, once

    for idx, enc in zip(draws, got, strict=True):
        want = train.encode_batch(pipe, collate([ds[i] for i in idx]), "cpu")
        for name in ("latent_mean", "latent_std", "text_states"):
            torch.testing.assert_close(getattr(enc, name), getattr(want, name), rtol=1e-5, atol=1e-6)
        assert enc.text_states.requires_grad == train_text

    other = train.EncodedSet(pipe, ds, "cpu", chunk=3)
    for k in reversed(range(len(draws))):  # another order, as a resumed run draws them
        again = other.batch(draws[k])
        for name in ("latent_mean", "latent_std", "text_states"):
            assert torch.equal(getattr(again, name), getattr(got[k], name)), name

    every = train.EncodedSet(pipe, ds, "cpu", cache=False)
    vae_calls.clear()
    for _ in range(2):
        every.batch([0, 1])
    assert vae_calls == [2, 2]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_cached_encodings_train_what_encoding_every_step_trains(base_pipe, ft_set, tmp_path, method):
    cfg = _cfg(method=method, steps=4, checkpoint_every=4)
    runs = {}
    for cache in (True, False):
        pipe = copy.deepcopy(base_pipe)
        log = finetune(pipe, ft_set, cfg, tmp_path / str(cache), progress=False, cache_encodings=cache)
        assert log["encodings_cached"] == cache
        runs[cache] = (log["losses"], pipe.unet.state_dict())
    (cached, w_cached), (every, w_every) = runs[True], runs[False]
    np.testing.assert_allclose(cached, every, rtol=1e-5)
    base = {k.replace(".base_layer", ""): v for k, v in base_pipe.unet.state_dict().items()}
    for k, v in w_every.items():  # the updates agree to rounding (Adam may amplify it on near-zero gradients)
        update = v - base.get(k.replace(".base_layer", ""), torch.zeros_like(v))
        gap = (w_cached[k] - v).norm()
        assert gap <= 1e-3 * update.norm() + 1e-7, k


def test_resume_point_needs_every_checkpoint_the_run_keeps():
    ckpts = [(s, f"step-{s}") for s in (2, 4, 6)]
    assert train.resume_point(ckpts, _cfg(steps=6, checkpoint_every=2)) == "step-6"
    assert train.resume_point(ckpts, _cfg(steps=5, checkpoint_every=2)) == "step-4"  # none beyond the run
    assert train.resume_point(ckpts, _cfg(steps=6, checkpoint_every=3)) == "step-2"  # step 3 must be written
    assert train.resume_point(ckpts[1:], _cfg(steps=6, checkpoint_every=2)) is None
    assert train.resume_point([], _cfg(steps=6, checkpoint_every=2)) is None
