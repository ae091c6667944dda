"""MACE on the tiny random SD-architecture pipeline: refinement, LoRA training, save/load/fuse."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from resurgence.erasure.artifact import (
    ConceptSpec,
    apply_deltas,
    apply_erasure,
    kv_module_names,
    lora_deltas,
    save_erasure,
)
from resurgence.layout import ERASED_LORA
from resurgence.mace.attention import AttentionProbe, concept_token_mask, probing_cross_attention
from resurgence.mace.config import EraseConfig
from resurgence.mace.erase import erase_concepts, mapping_prompts
from resurgence.mace.lora import (
    ConceptData,
    _remove_adapter,
    images_to_tensor,
    importance_weights,
    masks_to_tensor,
    measure_attention,
    pipeline_resolution,
    train_concept_loras,
)
from resurgence.mace.refine import collect_coexisting_embeddings, encode_prompts
from resurgence.models.pipeline import build_random_pipeline

ANN = ConceptSpec(
    "Ann X", ("a photo of Ann X", "a portrait of Ann X at night", "Ann X in a park"), ("Ann X", "Annie")
)
BOB = ConceptSpec("Bob Y", ("a photo of Bob Y", "a sketch of Bob Y"))
PRESERVE = ("a photo of a dog", "a red car on a street", "a bowl of fruit")


def image_source(name: str, n: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(n)]
    masks = np.zeros((n, 16, 16), dtype=bool)
    masks[:, 3:13, 2:12] = True
    return images, masks


def drawn(requests) -> list[tuple[list[Image.Image], np.ndarray]]:
    """`image_source` as erase_concepts asks for it: every concept's images in one call."""
    return [image_source(r.name, r.n, r.seed) for r in requests]


def kv_weights(pipe) -> dict[str, torch.Tensor]:
    return {n: pipe.unet.get_submodule(n).weight.detach().clone() for n in kv_module_names(pipe.unet)}


def render(pipe, prompt: str = "a photo of Ann X") -> np.ndarray:
    g = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, guidance_scale=3.0, generator=g, output_type="np").images


def test_probe_processor_is_a_transparent_drop_in(pipe) -> None:
    unet = pipe.unet
    g = torch.Generator().manual_seed(0)
    x, emb = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=emb).sample
        probe = AttentionProbe(
            token_mask=torch.ones(2, 77, dtype=torch.bool), spatial_mask=torch.ones(2, 1, 16, 16)
        )
        with probing_cross_attention(unet, probe):
            got = unet(x, t, encoder_hidden_states=emb).sample
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert len(probe.names) == 4 and all(n.endswith("attn2") for n in probe.names)
    # every patch gives all its attention to "all tokens": mass 1
    assert probe.mean_mass().item() == pytest.approx(1.0, abs=1e-5)
    assert type(unet.attn_processors[f"{probe.names[0]}.processor"]).__name__ != "ProbeAttnProcessor"


def test_refinement_maps_coexisting_keys_and_values_to_the_mapping_concept(pipe) -> None:
    cfg = EraseConfig.celebrity(refine_only=True, include_padding=False, lambda1=1e-4, preserve=PRESERVE)
    base = kv_weights(pipe)
    erasure = erase_concepts(pipe, [ANN], cfg, drawn, "cpu", progress=False)
    for n, w in kv_weights(pipe).items():  # the pipeline is left untouched
        assert torch.equal(w, base[n])
    assert erasure.concept_loras == {} and set(erasure.deltas) == set(base)
    apply_deltas(pipe.unet, erasure.deltas)
    mp = mapping_prompts(ANN.prompts, ANN.phrases, "a person")
    E_co, E_gen = collect_coexisting_embeddings(pipe, ANN.prompts, mp, include_padding=False)
    with torch.no_grad():
        for n, w0 in base.items():
            new = pipe.unet.get_submodule(n)(E_co)  # erased model on the concept's tokens
            target = E_gen @ w0.T  # original model on the mapping concept's tokens
            before = E_co @ w0.T
            scale = target.norm()
            assert (before - target).norm() / scale > 1e-2  # there was something to change
            assert (new - target).norm() / scale < 2e-3, n
    # the prior prompts' keys barely move
    with torch.no_grad():
        from resurgence.mace.refine import collect_token_embeddings

        E_p = collect_token_embeddings(pipe, PRESERVE)
        for n, w0 in base.items():
            rel = (pipe.unet.get_submodule(n)(E_p) - E_p @ w0.T).norm() / (E_p @ w0.T).norm()
            assert rel < (erasure.deltas[n].norm() / w0.norm())


def test_lora_training_lowers_masked_attention(pipe) -> None:
    images, masks = image_source("Ann X", 3, 0)
    cfg = EraseConfig.celebrity(lora_steps=8, lora_lr=5e-2)
    base = kv_weights(pipe)
    before = measure_attention(pipe, ANN.prompts, ANN.phrases, images, masks, "cpu", timesteps=(250, 350))
    state, losses = train_concept_loras(
        pipe, [ConceptData(ANN.prompts, ANN.phrases, images, masks, 0)], cfg, "cpu"
    )[0]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert not getattr(pipe.unet, "peft_config", None)  # adapter removed ...
    for n, w in kv_weights(pipe).items():  # ... and the weights untouched
        assert torch.equal(w, base[n])
    assert all(".attn2.to_k.lora_" in k or ".attn2.to_v.lora_" in k for k in state)
    assert {k.split(".lora_")[0] for k in state} == set(base)
    assert all(v.shape[0] == 1 for k, v in state.items() if "lora_A" in k)  # rank 1
    apply_deltas(pipe.unet, lora_deltas(state))
    after = measure_attention(pipe, ANN.prompts, ANN.phrases, images, masks, "cpu", timesteps=(250, 350))
    assert after["loss"] < 0.98 * before["loss"]
    assert after["mass"] < before["mass"] - 0.02


def peft_reference_lora(
    pipe, item: ConceptData, cfg: EraseConfig
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """One concept's LoRA the reference's way: a peft adapter on the UNet, trained alone with the global
    gradient clip (the trainer's implementation before concepts trained side by side)."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet, vae = pipe.unet, pipe.vae
    gen, rng = torch.Generator().manual_seed(item.seed), np.random.default_rng(item.seed)
    with torch.no_grad():
        dist = vae.encode(images_to_tensor(item.images, pipeline_resolution(pipe))).latent_dist
        emb = encode_prompts(pipe, item.prompts)
    tok_mask = concept_token_mask(pipe.tokenizer, item.prompts, item.phrases, cfg.use_pooler)
    spatial = masks_to_tensor(item.masks)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    T = sched.config.num_train_timesteps
    with torch.random.fork_rng():
        torch.manual_seed(item.seed)
        unet.add_adapter(
            LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_rank,
                init_lora_weights="gaussian",
                target_modules=["attn2.to_k", "attn2.to_v"],
            ),
            adapter_name="reference",
        )
    losses, order = [], []
    try:
        params = [p for p in unet.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lora_lr, weight_decay=cfg.lora_weight_decay)
        probe = AttentionProbe()
        with probing_cross_attention(unet, probe):
            for _ in range(cfg.lora_steps):
                while len(order) < cfg.train_batch_size:
                    order.extend(rng.permutation(len(item.images)).tolist())
                idx, order = order[: cfg.train_batch_size], order[cfg.train_batch_size :]
                pidx = rng.integers(len(item.prompts), size=len(idx))
                eps = torch.randn(dist.mean[idx].shape, generator=gen)
                latents = (dist.mean[idx] + dist.std[idx] * eps) * vae.config.scaling_factor
                noise = torch.randn(latents.shape, generator=gen)
                t = torch.as_tensor(rng.choice(T, size=len(idx), p=importance_weights(T)))
                probe.set_targets(tok_mask[pidx], spatial[idx])
                unet(sched.add_noise(latents, noise, t), t, encoder_hidden_states=emb[pidx])
                loss = probe.loss()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                opt.zero_grad()
                losses.append(float(loss))
                probe.reset()
        state = {
            k: v.detach().clone()
            for k, v in get_peft_model_state_dict(unet, adapter_name="reference").items()
        }
    finally:
        _remove_adapter(unet, "reference")
    return state, losses


def test_concept_loras_side_by_side_are_the_loras_trained_alone_the_reference_way(pipe) -> None:
    """Two concepts in one UNet call per step give each the LoRA, and the losses, that peft's adapter
    trained on that concept alone gives. The clip is tight, so that clipping both concepts' gradients
    together instead of each its own would show."""
    cfg = EraseConfig.celebrity(lora_steps=4, lora_lr=5e-2, train_batch_size=2, max_grad_norm=1e-3)
    items = [
        ConceptData(ANN.prompts, ANN.phrases, *image_source("Ann X", 3, 0), seed=5),
        ConceptData(BOB.prompts, ("Bob Y",), *image_source("Bob Y", 2, 1), seed=6),
    ]
    base = kv_weights(pipe)
    together = train_concept_loras(pipe, items, cfg, "cpu")
    for n, w in kv_weights(pipe).items():  # the UNet is left as it was
        assert torch.equal(w, base[n]) and type(pipe.unet.get_submodule(n)) is torch.nn.Linear
    for item, (state, losses) in zip(items, together, strict=True):
        ref_state, ref_losses = peft_reference_lora(pipe, item, cfg)
        assert losses == pytest.approx(ref_losses, rel=1e-4)
        assert list(state) == list(ref_state)
        for k in state:
            torch.testing.assert_close(
                state[k], ref_state[k], rtol=1e-4, atol=2e-5
            )  # Adam at lr 5e-2 amplifies rounding
    # the two LoRAs differ from each other and moved from their initial values
    a, b = together[0][0], together[1][0]
    assert any(not torch.allclose(a[k], b[k]) for k in a)
    assert all(v.abs().sum() > 0 for k, v in a.items() if ".lora_B." in k and "attn2.to_k" in k)


def test_concept_lora_is_a_function_of_its_seed(pipe) -> None:
    """Two trainings with one seed give the same LoRA whatever the global RNG holds (peft initialises the
    adapter from it), another seed another LoRA, and the caller's RNG is left where it was."""
    images, masks = image_source("Ann X", 2, 0)
    cfg = EraseConfig.celebrity(lora_steps=2, lora_lr=5e-2)

    def train(seed: int, global_seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(global_seed)
        state, _ = train_concept_loras(
            pipe, [ConceptData(ANN.prompts, ANN.phrases, images, masks, seed)], cfg, "cpu"
        )[0]
        return state

    first, again = train(0, global_seed=1), train(0, global_seed=2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    other = train(1, global_seed=1)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    train_concept_loras(pipe, [ConceptData(ANN.prompts, ANN.phrases, images, masks, 0)], cfg, "cpu")
    assert torch.equal(torch.rand(4), expected)


def test_erase_save_and_apply(pipe, tokdir, tmp_path, caplog) -> None:
    cfg = EraseConfig.celebrity(
        lora_steps=2, images_per_concept=2, preserve=PRESERVE, domain_preserve=("a photo of Cat Z",)
    )
    base = kv_weights(pipe)
    erasure = erase_concepts(pipe, [ANN, BOB], cfg, drawn, "cpu", progress=False)
    for n, w in kv_weights(pipe).items():
        assert torch.equal(w, base[n])
    r = erasure.report
    for key in (
        "delta_rel_norm",
        "lora_loss",
        "wall_time_s",
        "peak_memory",
        "config",
        "seed",
        "refine",
        "fusion",
    ):
        assert key in r, key
    assert set(r["delta_rel_norm"]) == set(base) and all(v > 0 for v in r["delta_rel_norm"].values())
    assert set(r["lora_loss"]) == {"Ann X", "Bob Y"} and all(len(v) == 2 for v in r["lora_loss"].values())
    assert r["peak_memory"]["bytes"] > 0 and r["seed"] == 2024 and r["config"]["lora_steps"] == 2
    assert set(erasure.concept_loras) == {"Ann X", "Bob Y"}

    out = save_erasure(erasure, tmp_path / "erasure")
    assert (out / ERASED_LORA).is_file() and (out / "concepts" / "ann-x.safetensors").is_file()
    assert (out / "concepts" / "bob-y.safetensors").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["preserve"] == list(PRESERVE) and report["lora_file"] == ERASED_LORA

    img_base = render(pipe)
    # plain diffusers loading works and changes the images
    pipe.load_lora_weights(str(out), weight_name=ERASED_LORA, adapter_name="check")
    img_lora = render(pipe)
    pipe.unload_lora_weights()
    assert np.abs(img_lora - img_base).max() > 1e-4

    fresh = build_random_pipeline("tiny", seed=0, tokenizer_dir=tokdir)
    fresh.set_progress_bar_config(disable=True)
    with caplog.at_level(logging.ERROR):
        applied = apply_erasure(fresh, out)
    assert not getattr(fresh.unet, "peft_config", None)
    for n, w in kv_weights(fresh).items():
        expected = base[n] + erasure.deltas[n]
        assert ((w - expected).norm() / expected.norm()).item() < 1e-5, n
        torch.testing.assert_close(applied[n], erasure.deltas[n], rtol=1e-4, atol=1e-6)
    img_erased = render(fresh)
    assert np.abs(img_erased - img_base).max() > 1e-4
    np.testing.assert_allclose(img_erased, img_lora, atol=1e-4)
