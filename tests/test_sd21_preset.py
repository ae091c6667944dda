"""The SD v2.1 preset: the released architectures (sizes, text layer), the v-prediction target of the
fine-tune loss, availability messages and a dry run of the full study on local stand-in folders."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import UNet2DConditionModel
from snakemake_helpers import job_counts, snakemake
from test_sd14_preset import expected_counts, fake_models
from transformers import CLIPTextConfig, CLIPTextModel

from resurgence import study
from resurgence.config import deep_merge, load_config
from resurgence.finetune import train as finetune_train
from resurgence.models import availability
from resurgence.models.pipeline import (
    ARCHITECTURES,
    SD21,
    SD21_BASE,
    TINY,
    build_random_pipeline,
    load_pipeline,
)

ROOT = Path(__file__).resolve().parents[1]
PRESET = [ROOT / "config.yaml", ROOT / "config.sd14.yaml", ROOT / "config.sd21.yaml"]


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(PRESET)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_architectures_have_the_released_sizes():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_BASE.unet)
        text = CLIPTextModel(CLIPTextConfig(**SD21_BASE.text))
    # stabilityai/stable-diffusion-2-1(-base): unet 865,910,724 and text_encoder 340,387,840 parameters
    assert _count(unet) == 865_910_724 and _count(text) == 340_387_840
    assert SD21_BASE.unet["cross_attention_dim"] == SD21_BASE.text["hidden_size"] == 1024
    assert (SD21_BASE.resolution, SD21.resolution) == (512, 768) and SD21.unet["sample_size"] == 96
    assert SD21.scheduler == {"prediction_type": "v_prediction"} and SD21_BASE.scheduler == {}
    assert ARCHITECTURES["sd21"] is SD21 and ARCHITECTURES["sd21_base"] is SD21_BASE


def test_the_23_layer_text_encoder_gives_the_24_layer_towers_penultimate_features():
    """SD 2 conditions on OpenCLIP ViT-H's penultimate layer; the release drops the last of 24 layers."""
    small = dict(
        SD21_BASE.text, hidden_size=32, intermediate_size=64, num_attention_heads=4, projection_dim=16
    )
    torch.manual_seed(0)
    full = CLIPTextModel(CLIPTextConfig(**{**small, "num_hidden_layers": 24})).eval()
    cut = CLIPTextModel(CLIPTextConfig(**{**small, "num_hidden_layers": 23})).eval()
    missing, unexpected = cut.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(".layers.23." in k for k in unexpected)
    ids = torch.randint(0, 49408, (2, 77))
    with torch.no_grad():
        out = full(ids, output_hidden_states=True)
        penultimate = full.final_layer_norm(out.hidden_states[-2])
        torch.testing.assert_close(cut(ids).last_hidden_state, penultimate)
        assert not torch.allclose(out.last_hidden_state, penultimate)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_finetune_loss_regresses_the_schedulers_target(prediction_type, tmp_path):
    """With a UNet that predicts zeros, the loss is the mean square of its target: the noise, or
    v = sqrt(a_t) noise - sqrt(1 - a_t) x0 (written out here, and diffusers' `get_velocity`)."""
    arch = dataclasses.replace(TINY, scheduler={"prediction_type": prediction_type})
    pipe = build_random_pipeline(arch, seed=0)
    pipe.save_pretrained(tmp_path / "p")
    pipe = load_pipeline(tmp_path / "p", scheduler="ddim")  # the study's reload keeps the prediction type
    assert pipe.scheduler.config.prediction_type == prediction_type
    sched = finetune_train.DDPMScheduler.from_config(pipe.scheduler.config)
    res = pipe.unet.config.sample_size * pipe.vae_scale_factor
    batch = {
        "pixel_values": torch.rand(2, 3, res, res) * 2 - 1,
        "input_ids": pipe.tokenizer(
            ["a photo", "a cat"], padding="max_length", return_tensors="pt"
        ).input_ids,
    }
    seen = {}

    def zero_unet(noisy, t, hidden, return_dict=False):
        seen["noisy"], seen["t"] = noisy, t
        return (torch.zeros_like(noisy),)

    pipe.unet.forward = zero_unet
    encoded = finetune_train.encode_batch(pipe, batch, torch.device("cpu"))
    loss = finetune_train._loss(pipe, sched, encoded, torch.Generator().manual_seed(3), torch.device("cpu"))
    # replay the generator: posterior sample, noise, timesteps (the order `_loss` draws them in)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        dist = pipe.vae.encode(batch["pixel_values"]).latent_dist
        x0 = (
            dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        ) * pipe.vae.config.scaling_factor
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (2,), generator=gen)
    assert torch.equal(seen["t"], t)
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    if prediction_type == "epsilon":
        target = noise
    else:
        target = a.sqrt() * noise - (1 - a).sqrt() * x0
        torch.testing.assert_close(target, sched.get_velocity(x0, noise, t), rtol=1e-5, atol=1e-5)
    assert loss.item() == pytest.approx(float((target**2).mean()), rel=1e-4)


def test_missing_models_name_the_sd21_pipeline(config, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    lines = availability.missing_models(config)
    assert lines[0].startswith("models.pipeline:") and "stabilityai/stable-diffusion-2-1-base" in lines[0]
    with pytest.raises(Exception, match="the sd21 study cannot start"):
        availability.check_available(config)
    assert availability.missing_models(deep_merge(config, fake_models(tmp_path))) == []


def test_dry_run_with_local_models_lists_the_full_dag(config, tmp_path):
    overlay = tmp_path / "local_models.yaml"
    overlay.write_text(yaml.safe_dump(fake_models(tmp_path)))
    out = snakemake(
        "-n", "--forceall", "--rerun-incomplete", "--configfile", "config.sd14.yaml", "config.sd21.yaml", str(overlay),
        check=False,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    counts = job_counts(out.stdout)
    expected = expected_counts(config)
    assert counts == {**expected, "total": sum(expected.values())}, (counts, expected)
    # every method erases each of Fig. 5's tasks' concepts in the methods comparison
    methods = {study.erase_method(config, r.task, r.erase) for r in study.all_runs(config)}
    assert methods == {"mace", "uce", "esd"} and counts["figure"] == len(config["experiments"])
