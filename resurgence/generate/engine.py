"""Batched, seed-addressed image generation.

Every image's initial latent comes from its own CPU generator seeded with that image's seed,
so an image is a function of (model, prompt, seed, config) only: batch size, batch
composition and device placement of the RNG never change what a given (prompt, seed) yields.
That is what makes evaluation runs resumable and comparable across models.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel

from resurgence.generate import COMPILE_MODES, UNCONDITIONAL_PROMPT
from resurgence.generate.fp8 import check_granularity, set_conv_fp8, set_linear_fp8
from resurgence.io import atomic_path
from resurgence.layout import IMAGES_INDEX
from resurgence.models.pipeline import SCHEDULERS, make_scheduler
from resurgence.phases import SAMPLE, WRITE, in_phase, phase
from resurgence.progress import progress_bar

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# scaled_dot_product_attention kernels by config name; "default" leaves the choice to PyTorch's dispatcher.
SDPA_KERNELS: dict[str, SDPBackend] = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
ATTENTION_BACKENDS = ("default", *SDPA_KERNELS)


def native_bf16(device: str | torch.device) -> bool:
    """Whether bf16 arithmetic runs natively on ``device``.

    CPUs without AVX512-BF16 or AMX emulate it: on a 2-core AVX2-only EPYC the toy model sampled
    at 0.24 images/s in bf16 against 3.7 in fp32, while a bf16-capable 2-core EPYC gave 9.2 vs 5.2.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_dtype(name: str, device: str | torch.device | None = None) -> torch.dtype:
    """Map a config dtype name ("float32", "bf16", "auto", ...) to a torch dtype.

    "auto" is bfloat16 where ``device`` runs it natively (`native_bf16`), else float32.
    """
    if name == "auto":
        if device is None:
            raise ValueError("dtype 'auto' needs the device it will run on")
        return torch.bfloat16 if native_bf16(device) else torch.float32
    key = DTYPE_ALIASES.get(name, name)
    if key not in DTYPES:
        raise ValueError(
            f"dtype must be one of {sorted(DTYPES) + sorted(DTYPE_ALIASES)} or 'auto', got {name!r}"
        )
    return DTYPES[key]


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings; ``height``/``width`` None means the UNet's native resolution."""

    steps: int = 25
    guidance_scale: float = 7.5
    batch_size: int = 32
    height: int | None = None
    width: int | None = None
    scheduler: str = "ddim"
    dtype: str = "float32"
    negative_prompt: str = UNCONDITIONAL_PROMPT
    # Speed levers (GPU): channels-last convolutions and torch.compile of the UNet ("none" | a
    # torch.compile mode). Same scheduler and seeds; bf16/compiled kernels change pixels only by
    # rounding (benchmarks/generation.py --reference measures it). No QKV fusion: MACE and LoRA
    # address to_k/to_v by name, and a fused to_kv would silently escape their edits.
    channels_last: bool = False
    compile: str = "none"
    # The preferred attention kernel (`attention_backend`). SD v1.4's UNet step on an H200, bf16,
    # batch 64 (benchmarks/unet_profile.py): cuDNN 0.204 s, flash 0.225 s, memory-efficient 0.273 s.
    attention: str = "default"
    # The UNet's linear layers in FP8 (e4m3) with one scale per tensor or per row ("none" | "tensor" |
    # "row"; `resurgence.generate.fp8`): bf16 sampling only.
    linear_fp8: str = "none"
    # The UNet's convolutions in FP8: input scaled per tensor, weight per tensor or per output channel
    # ("none" | "tensor" | "row"; cuDNN's FP8 convolution, `resurgence.generate.scaled_conv`): bf16 only.
    conv_fp8: str = "none"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {list(ATTENTION_BACKENDS)}, got {self.attention!r}")
        for key in ("linear_fp8", "conv_fp8"):
            value = getattr(self, key)
            check_granularity(value, key)
            if value != "none" and DTYPE_ALIASES.get(self.dtype, self.dtype) != "bfloat16":
                raise ValueError(f"{key} {value!r} needs dtype bfloat16, got {self.dtype!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {list(COMPILE_MODES)}, got {self.compile!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {self.scheduler!r}")
        resolve_dtype(self.dtype, "cpu")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationConfig:
        """Build from a config mapping, rejecting unknown keys (typos must not silently fall back)."""
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown GenerationConfig keys: {unknown}")
        return cls(**d)


def _sampling_pipe(pipe, scheduler: str):
    """A pipeline sharing ``pipe``'s modules but with its own scheduler (the caller's pipe keeps its own)."""
    sched = make_scheduler(scheduler, dict(pipe.scheduler.config))
    kwargs: dict[str, Any] = {**pipe.components, "scheduler": sched}
    if "requires_safety_checker" in inspect.signature(type(pipe).__init__).parameters:
        kwargs["requires_safety_checker"] = pipe.config.get("requires_safety_checker", False)
    p = type(pipe)(**kwargs)
    p.set_progress_bar_config(disable=True)
    return p


def move_pipe(pipe, device: str | torch.device, dtype: torch.dtype) -> None:
    """Move the pipe's modules to ``device``, casting only those not already in ``dtype`` (no-op casts warn)."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            move_module(module, device, dtype)


def move_module(module: torch.nn.Module, device: str | torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``module.to(device, dtype)`` that skips the cast when every floating parameter already has ``dtype``."""
    if any(p.is_floating_point() and p.dtype != dtype for p in module.parameters()):
        return module.to(device=device, dtype=dtype)
    return module.to(device=device)


def prepare_for_speed(pipe, cfg: GenerationConfig) -> None:
    """Apply the config's speed levers to ``pipe`` in place (idempotent; a compile mode is set once).

    FP8 linear layers and convolutions (``cfg.linear_fp8``, ``cfg.conv_fp8``) keep the UNet's parameters:
    they quantize its current weights at every bf16 forward without autograd, so erasures and fine-tunes
    fused later still run.

    The compiled UNet keeps its module type (``nn.Module.compile``), so LoRA loading, MACE's
    weight edits and ``state_dict`` work unchanged; shapes are fixed by the padded batches, so
    each (batch, resolution) compiles once per process.
    """
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if getattr(pipe, "_resurgence_channels_last", False) != cfg.channels_last:
        pipe.unet.to(memory_format=fmt)
        pipe.vae.to(memory_format=fmt)
        pipe._resurgence_channels_last = cfg.channels_last
    if getattr(pipe, "_resurgence_linear_fp8", "none") != cfg.linear_fp8:
        set_linear_fp8(pipe.unet, cfg.linear_fp8)
        pipe._resurgence_linear_fp8 = cfg.linear_fp8
    if getattr(pipe, "_resurgence_conv_fp8", "none") != cfg.conv_fp8:
        set_conv_fp8(pipe.unet, cfg.conv_fp8)
        pipe._resurgence_conv_fp8 = cfg.conv_fp8
    compiled = getattr(pipe, "_resurgence_compile", "none")
    if cfg.compile != compiled:
        if compiled != "none":
            raise RuntimeError(
                f"the UNet is already compiled ({compiled!r}); load a new pipeline for {cfg.compile!r}"
            )
        pipe.unet.compile(mode=cfg.compile)
        pipe._resurgence_compile = cfg.compile


def attention_backend(name: str):
    """Context preferring one scaled_dot_product_attention kernel ("default": PyTorch's order).

    A preference, not a pin: where the kernel cannot take a shape (cuDNN and the VAE's single
    512-wide head) the next kernel runs instead.
    """
    if name == "default":
        return contextlib.nullcontext()
    rest = [k for n, k in SDPA_KERNELS.items() if n != name]
    return sdpa_kernel([SDPA_KERNELS[name], *rest], set_priority=True)


def initial_latents(pipe, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """Float32 CPU latents, one row per seed, each from its own ``torch.Generator().manual_seed(seed)``."""
    shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
@in_phase(SAMPLE)
def generate(
    pipe,
    prompts: list[str],
    seeds: list[int],
    cfg: GenerationConfig,
    device: str | torch.device = "cpu",
    progress: bool = True,
    pad_to_batch: bool = True,
) -> list[Image.Image]:
    """One RGB image per (prompt, seed) pair, generated in batches of ``cfg.batch_size``.

    ``pad_to_batch`` False sizes the batches to the request when it is smaller than a batch
    (a few images per call, as MACE's per-concept data): no wasted padding, and the images are
    still a function of (prompt, seed, request size).

    The pipe's modules are moved to ``device`` and cast to ``cfg.dtype`` in place (copying SD
    weights per call would be wasteful); its scheduler is left untouched.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"prompts and seeds must have the same length ({len(prompts)} != {len(seeds)})")
    if not prompts:
        return []
    dtype = resolve_dtype(cfg.dtype, device)
    move_pipe(pipe, device, dtype)
    prepare_for_speed(pipe, cfg)
    sp = _sampling_pipe(pipe, cfg.scheduler)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = cfg.height or native, cfg.width or native
    images: list[Image.Image] = []
    starts = range(0, len(prompts), cfg.batch_size)
    for start in progress_bar(starts, desc="generate", enabled=progress, leave=False):
        bp = list(prompts[start : start + cfg.batch_size])
        bs = list(seeds[start : start + cfg.batch_size])
        n = len(bp)
        # Pad the last batch to full size: per-sample results are then bitwise independent of the
        # batch's other members (kernels are chosen per shape), so resumed runs match uninterrupted ones.
        size = cfg.batch_size if pad_to_batch else min(cfg.batch_size, len(prompts))
        bp, bs = bp + [bp[-1]] * (size - n), bs + [bs[-1]] * (size - n)
        latents = initial_latents(pipe, bs, height, width).to(device=device, dtype=dtype)
        with attention_backend(cfg.attention):
            out = sp(
                prompt=bp,
                negative_prompt=[cfg.negative_prompt] * len(bp) if cfg.guidance_scale > 1 else None,
                height=height,
                width=width,
                num_inference_steps=cfg.steps,
                guidance_scale=cfg.guidance_scale,
                latents=latents,
                output_type="pil",
            )
        images.extend(img.convert("RGB") for img in out.images[:n])
    return images


def noise_seed(record: dict[str, Any]) -> int:
    """The seed of a record's initial latent: ``noise_seed`` when it has one (extra samples), else ``seed``."""
    return int(record.get("noise_seed", record["seed"]))


def _file_name(record: dict[str, Any], i: int) -> str:
    return str(record.get("file_name") or f"{i:06d}.png")


# What a folder's PNGs were rendered from (`generate_to_dir`); a copy from a pool removes it.
FINGERPRINT = "fingerprint.json"


def generate_to_dir(
    pipe,
    records: list[dict[str, Any]],
    cfg: GenerationConfig,
    out_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    progress: bool = True,
    model_key: str = "",
) -> list[dict[str, Any]]:
    """Generate one PNG per record (needs "prompt" and "seed"; see `noise_seed`), then write ``index.jsonl``.

    PNGs are reused only when ``fingerprint.json`` says they came from the same records, config and
    ``model_key`` (the caller's identity of the model weights); otherwise the folder's PNGs are stale
    (a rerun after a parameter or model change) and are deleted first.

    Resumable: records whose PNG already exists are skipped, so a crashed job continues where
    it stopped. Each PNG is written atomically, and ``index.jsonl`` (record + ``file_name``,
    default ``{i:06d}.png`` unless the record names one, also under the alias ``file``) is
    written last, so its presence means the directory is complete. Returns the index rows.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The resolved dtype too: "auto" draws other pixels on a machine without native bf16.
    fingerprint = hashlib.sha256(
        json.dumps(
            [records, asdict(cfg), str(resolve_dtype(cfg.dtype, device)), model_key],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    stamp = out / FINGERPRINT
    if not stamp.exists() or json.loads(stamp.read_text()).get("sha256") != fingerprint:
        for old_png in out.rglob("*.png"):
            old_png.unlink()
        with atomic_path(stamp) as tmp:
            tmp.write_text(json.dumps({"sha256": fingerprint}))
    rows = []
    for i, r in enumerate(records):
        if "prompt" not in r or "seed" not in r:
            raise ValueError(f"record {i} lacks 'prompt' or 'seed': {r}")
        name = _file_name(r, i)
        rows.append({**r, "file_name": name})
    names = [r["file_name"] for r in rows]
    if len(set(names)) != len(names):
        raise ValueError("records map to duplicate file names")
    todo = [r for r in rows if not (out / r["file_name"]).exists()]
    chunk = cfg.batch_size
    starts = range(0, len(todo), chunk)
    for start in progress_bar(starts, desc=f"generate {out.name}", enabled=progress):
        batch = todo[start : start + chunk]
        imgs = generate(
            pipe, [r["prompt"] for r in batch], [noise_seed(r) for r in batch], cfg, device, False
        )
        with phase(WRITE):
            for r, img in zip(batch, imgs, strict=True):
                target = out / r["file_name"]
                target.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(target) as tmp:
                    img.save(tmp, format="PNG")
    with atomic_path(out / IMAGES_INDEX) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))
    return rows


@in_phase(WRITE)
def copy_from_pool(
    records: list[dict[str, Any]], pool_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> list[dict[str, Any]]:
    """Write ``records``' images into ``out_dir`` from a pool that `generate_to_dir` filled with the same
    model and settings (a shared base-model pool, `study.base_pool_spec`), then ``index.jsonl`` last.

    An image is the pool's image of the same prompt and noise seed, so a task's base images are the
    pool's bytes whichever tasks share it. Every PNG is rewritten (a copy is cheap), so nothing of an
    earlier layout of the folder survives; a record the pool lacks is an error naming it."""
    pool, out = Path(pool_dir), Path(out_dir)
    by_key = {
        (r["prompt"], noise_seed(r)): r["file_name"]
        for r in map(json.loads, (pool / IMAGES_INDEX).read_text().splitlines())
    }
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.rglob("*.png"), out / IMAGES_INDEX, out / FINGERPRINT]:
        stale.unlink(missing_ok=True)
    rows = []
    for i, r in enumerate(records):
        key = (r["prompt"], noise_seed(r))
        if key not in by_key:
            raise ValueError(f"{pool / IMAGES_INDEX} has no image of prompt {key[0]!r}, noise seed {key[1]}")
        row = {**r, "file_name": _file_name(r, i)}
        (out / row["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / row["file_name"]) as tmp:
            shutil.copyfile(pool / by_key[key], tmp)
        rows.append(row)
    with atomic_path(out / IMAGES_INDEX) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))
    return rows


def config_dict(cfg: GenerationConfig) -> dict[str, Any]:
    """Plain dict of a config, for manifests."""
    return asdict(cfg)
