"""Loading Stable-Diffusion-architecture pipelines, real or toy, through one function.

`build_random_pipeline` builds the same classes from configs written here, at random
weights, so that code paths for SD v1.4 can be exercised with real shapes and no download.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from resurgence.models.tokenizer import openai_clip_tokenizer
from resurgence.phases import LOAD, in_phase

SCHEDULERS = {"ddim": DDIMScheduler, "pndm": PNDMScheduler, "dpm": DPMSolverMultistepScheduler}

# Scheduler settings of SD v1.4 (scaled-linear betas, 1000 steps); every world shares them.
SD_SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


@dataclass(frozen=True)
class Architecture:
    """The three model configs of a Stable-Diffusion-architecture pipeline."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    resolution: int
    tokenizer_max_length: int = 77
    extra: dict[str, Any] = field(default_factory=dict)
    # Changes to `SD_SCHEDULER_CONFIG` (SD v2.1 at 768 px predicts v, not the noise).
    scheduler: dict[str, Any] = field(default_factory=dict)
    pad_token: str = "<|endoftext|>"


# SD v1.4 (CompVis/stable-diffusion-v1-4): the public configs of its UNet, VAE and text encoder.
SD14 = Architecture(
    unet=dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    ),
    vae=dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    ),
    text=dict(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
    ),
    resolution=512,
)

# SD v2.1 (stabilityai/stable-diffusion-2-1-base, 512 px, epsilon): the public configs. Its text encoder is
# OpenCLIP ViT-H/14's text tower as transformers' CLIPTextModel with the last of its 24 layers dropped
# (23 layers, then the final LayerNorm): the penultimate-layer features SD 2 conditions on.
SD21_BASE = Architecture(
    unet=dict(
        SD14.unet,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
    ),
    vae=SD14.vae,
    text=dict(
        vocab_size=49408,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=23,
        num_attention_heads=16,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=512,
    ),
    resolution=512,
    pad_token="!",
)
# SD v2.1 (stabilityai/stable-diffusion-2-1): the same networks at 768 px, trained to predict v.
SD21 = Architecture(
    unet=dict(SD21_BASE.unet, sample_size=96),
    vae=dict(SD14.vae, sample_size=768),
    text=SD21_BASE.text,
    resolution=768,
    scheduler=dict(prediction_type="v_prediction"),
    pad_token="!",
)

# A few-MB model of the same classes, for unit tests on CPU.
TINY = Architecture(
    unet=dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    ),
    vae=dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    ),
    text=dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=32,
    ),
    resolution=16,
)

# The toy world's miniature SD v1.4 (64x64 RGB, f=4 VAE -> 16x16x4 latents), trained by
# `resurgence.toyworld.t2i`. Cross-attention (attn2.to_k/to_v, MACE's targets) sits at the
# 16x16 and 8x8 levels and in the 4x4 mid block, mirroring SD's (CA, CA, CA, plain) layout.
# Parameters: UNet 3.43M, VAE 2.70M, text encoder 7.76M with the compact world BPE (1688 tokens):
# 13.9M in all, 27 MB as the fp16 safetensors that `t2i` ships. Forward FLOPs per image: UNet
# 0.265 GFLOP per step, VAE decode ~1.2 GFLOP; 25 DDIM steps with CFG ~ 14 GFLOP per image.
# CPU, 2 threads, fp32, batch 32: ~0.17-0.2 s per image (5-6 img/s); bf16 roughly halves that.
TOY = Architecture(
    unet=dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        cross_attention_dim=384,
        attention_head_dim=(1, 2, 4),  # diffusers' legacy name: number of heads (head dim 32)
        norm_num_groups=16,
    ),
    vae=dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    ),
    text=dict(
        vocab_size=49408,  # build_toy_pipeline resizes it to the world tokenizer
        hidden_size=384,  # room for 140 names' own directions besides the traits (t2i.knowledge_spans)
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=6,
        max_position_embeddings=32,
        hidden_act="quick_gelu",
        projection_dim=384,
    ),
    resolution=64,
    tokenizer_max_length=32,
)

ARCHITECTURES: dict[str, Architecture] = {
    "sd14": SD14,
    "sd21_base": SD21_BASE,
    "sd21": SD21,
    "tiny": TINY,
    "toy": TOY,
}


def make_scheduler(name: str = "ddim", config: dict[str, Any] | None = None):
    """A diffusers scheduler by short name, with SD v1.4's noise schedule unless ``config`` overrides it."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {name!r}")
    return SCHEDULERS[name].from_config({**SD_SCHEDULER_CONFIG, **(config or {})})


def build_random_pipeline(
    arch: str | Architecture = "tiny",
    seed: int = 0,
    tokenizer_dir: str | os.PathLike | None = None,
    scheduler: str = "ddim",
) -> StableDiffusionPipeline:
    """A `StableDiffusionPipeline` of the given architecture at random (seeded) weights.

    The tokenizer is OpenAI CLIP's, written offline from open_clip's bundled BPE table.
    """
    a = ARCHITECTURES[arch] if isinstance(arch, str) else arch
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**a.unet)
    vae = AutoencoderKL(**a.vae)
    text_encoder = CLIPTextModel(CLIPTextConfig(**a.text))
    tokenizer = openai_clip_tokenizer(a.tokenizer_max_length, tokenizer_dir, pad_token=a.pad_token)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_scheduler(scheduler, a.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@in_phase(LOAD)
def load_pipeline(
    source: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    scheduler: str | None = None,
    local_files_only: bool = True,
) -> StableDiffusionPipeline:
    """Load a Stable-Diffusion pipeline from a local folder or a hub id already in the HF cache.

    ``local_files_only`` defaults to True: a study never downloads behind the user's back.
    """
    pipe = StableDiffusionPipeline.from_pretrained(
        str(source),
        dtype=dtype,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        local_files_only=local_files_only,
    )
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, dict(pipe.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
