"""Fine-tuning of a (possibly erased) Stable-Diffusion pipeline on a generated set.

The objective is the standard one of diffusers' ``train_text_to_image(_lora).py``: encode
images with the VAE (times its scaling factor), draw timesteps uniformly, noise the latents
with the pipe's own training noise schedule and regress the UNet output on the noise (or the
velocity for v-prediction models) with MSE. LoRA goes through diffusers' PEFT integration.

Resumability is exact: all randomness of a step comes from one CPU ``torch.Generator`` (noise,
timesteps, VAE posterior samples) plus torch's global RNG (optional flips), both saved in every
checkpoint, and the data order is a pure function of (seed, position). A run resumed from its
latest checkpoint therefore equals an uninterrupted one. Checkpoints are resumed only under the key
they were made with (`resurgence.state`): the config, the starting weights and the fine-tune set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from peft import LoraConfig
from peft.helpers import disable_input_dtype_casting
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from resurgence.finetune.config import FinetuneConfig
from resurgence.finetune.data import FinetuneImageDataset, collate
from resurgence.generate.engine import move_module
from resurgence.io import atomic_path, write_json
from resurgence.layout import CHECKPOINTS, FINAL, TRAIN_LOG, checkpoint_path, checkpoint_step
from resurgence.mace.refine import encode_prompts, tokenize
from resurgence.phases import LOAD, WRITE, in_phase
from resurgence.progress import progress_bar
from resurgence.state import claim_state_dir, config_key, content_digest

logger = logging.getLogger(__name__)

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
TEXT_ENCODER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER = "default"
# Optimizer, schedule and RNG of a checkpoint: what resuming needs beyond the weights.
TRAINING_STATE = "state.pt"
# Fields that may differ between a run and the run resuming it: the LR schedule does not depend on
# the total, so a longer or shorter run shares its first steps with this one.
RESUME_FREE = ("steps", "checkpoint_every")


def _weight_dtype(cfg: FinetuneConfig) -> torch.dtype:
    return {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.mixed_precision]


@contextlib.contextmanager
def adapter_input_casts_off(pipe, cfg: FinetuneConfig) -> Iterator[None]:
    """For LoRA under mixed precision, peft's cast of every adapter's input to its fp32 weights turned off.

    Under autocast the adapters' matmuls run in the half dtype whatever their input's dtype, so peft's
    cast changes nothing a step computes (the same loss and gradients, bit for bit); it only adds a cast
    and its backward per adapter layer (a profile of SD v1.4's LoRA step counted 628 ToCopyBackward).
    Entered once around the training loop (switching it walks every module), whose forwards all run
    under autocast.
    """
    with contextlib.ExitStack() as stack:
        if cfg.mixed_precision != "no" and cfg.method == "lora":
            for module in (pipe.unet, pipe.text_encoder):
                if getattr(module, "peft_config", None):
                    stack.enter_context(disable_input_dtype_casting(module))
        yield


def _setup_trainable(pipe, cfg: FinetuneConfig, device: torch.device) -> list[torch.nn.Parameter]:
    """Freeze what is not trained, attach LoRA adapters, and return the trainable parameters (fp32)."""
    unet, te, vae = pipe.unet, pipe.text_encoder, pipe.vae
    wdt = _weight_dtype(cfg)
    for m in (unet, te, vae):
        m.requires_grad_(False)
    # Frozen weights may live in the half dtype (memory); trained weights stay fp32 (optimizer precision).
    move_module(vae, device, wdt)
    move_module(te, device, torch.float32 if cfg.train_text_encoder and cfg.method == "full" else wdt)
    move_module(unet, device, torch.float32 if cfg.method == "full" else wdt)
    if cfg.method == "lora":
        unet.add_adapter(
            LoraConfig(
                r=cfg.rank,
                lora_alpha=cfg.lora_alpha,
                init_lora_weights="gaussian",
                target_modules=list(cfg.target_modules),
            ),
            adapter_name=ADAPTER,
        )
        modules = [unet]
        if cfg.train_text_encoder:
            te.add_adapter(
                LoraConfig(
                    r=cfg.rank,
                    lora_alpha=cfg.lora_alpha,
                    init_lora_weights="gaussian",
                    target_modules=list(TEXT_ENCODER_LORA_TARGETS),
                ),
                adapter_name=ADAPTER,
            )
            modules.append(te)
        params = [p for m in modules for n, p in m.named_parameters() if "lora_" in n]
        for p in params:
            p.data = p.data.float()
            p.requires_grad_(True)
    else:
        unet.requires_grad_(True)
        params = list(unet.parameters())
        if cfg.train_text_encoder:
            te.requires_grad_(True)
            params += list(te.parameters())
    return params


@in_phase(WRITE)
def _save_weights(pipe, cfg: FinetuneConfig, directory: Path) -> None:
    """Trained weights in diffusers' formats: LoRA file, or ``unet/`` (+ ``text_encoder/``) folders."""
    if cfg.method == "lora":
        te_layers = (
            get_peft_model_state_dict(pipe.text_encoder, adapter_name=ADAPTER)
            if cfg.train_text_encoder
            else None
        )
        type(pipe).save_lora_weights(
            str(directory),
            unet_lora_layers=get_peft_model_state_dict(pipe.unet, adapter_name=ADAPTER),
            text_encoder_lora_layers=te_layers,
            unet_lora_adapter_metadata=pipe.unet.peft_config[ADAPTER].to_dict(),
            text_encoder_lora_adapter_metadata=pipe.text_encoder.peft_config[ADAPTER].to_dict()
            if te_layers
            else None,
            safe_serialization=True,
        )
    else:
        pipe.unet.save_pretrained(str(directory / "unet"))
        if cfg.train_text_encoder:
            pipe.text_encoder.save_pretrained(str(directory / "text_encoder"))


def _load_folder_state(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _load_trained_weights(pipe, cfg: FinetuneConfig, directory: Path) -> None:
    """Put a checkpoint's weights back into the (already adapted) modules, for resuming."""
    if cfg.method == "lora":
        state = load_file(str(directory / LORA_WEIGHTS))
        for prefix, module in (("unet.", pipe.unet), ("text_encoder.", pipe.text_encoder)):
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if sub:
                res = set_peft_model_state_dict(module, sub, adapter_name=ADAPTER)
                unexpected = getattr(res, "unexpected_keys", None)
                if unexpected:
                    raise RuntimeError(f"unexpected LoRA keys when resuming: {unexpected[:5]}")
    else:
        pipe.unet.load_state_dict(_load_folder_state(directory / "unet"))
        if (directory / "text_encoder").is_dir():
            pipe.text_encoder.load_state_dict(_load_folder_state(directory / "text_encoder"), strict=False)


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    return {
        "generator": gen.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(gen: torch.Generator, s: dict[str, Any]) -> None:
    gen.set_state(s["generator"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


def resume_key(cfg: FinetuneConfig, dataset_dir: str | os.PathLike, model_key: str) -> dict[str, Any]:
    """What a fine-tune's checkpoints depend on: its config (less `RESUME_FREE`), the starting
    weights and the fine-tune set's content."""
    return {"config": config_key(cfg, RESUME_FREE), "model": model_key, "data": content_digest(dataset_dir)}


def resume_point(checkpoints: list[tuple[int, Path]], cfg: FinetuneConfig) -> Path | None:
    """The latest checkpoint a run of ``cfg`` can resume from: at most ``cfg.steps``, with every
    checkpoint ``cfg.checkpoint_every`` asks for before it present (the trajectory reads them)."""
    have = {s: p for s, p in checkpoints if s <= cfg.steps}
    usable = [
        s for s in have if all(k in have for k in range(cfg.checkpoint_every, s + 1, cfg.checkpoint_every))
    ]
    return have[max(usable)] if usable else None


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``out_dir/checkpoints`` as (step, path), by step."""
    root = Path(out_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for d in root.iterdir():
            step = checkpoint_step(d.name)
            if step is not None and (d / TRAINING_STATE).is_file():
                found.append((step, d))
    return sorted(found)


def _batch_indices(seed: int, n: int, start: int, size: int, cache: dict[int, torch.Tensor]) -> list[int]:
    """Indices at stream positions [start, start+size): epochs of seeded permutations (stateless, resumable)."""
    out = []
    for pos in range(start, start + size):
        epoch, i = divmod(pos, n)
        if epoch not in cache:
            cache.clear()  # only the current (and maybe next) epoch is ever needed
            cache[epoch] = torch.randperm(
                n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            )
        out.append(int(cache[epoch][i]))
    return out


@dataclass(frozen=True)
class EncodedBatch:
    """A batch as the UNet's loss takes it: the VAE posterior's moments and the text encoder's states."""

    latent_mean: torch.Tensor
    latent_std: torch.Tensor
    text_states: torch.Tensor


def _trains(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _text_states(te, ids: torch.Tensor) -> torch.Tensor:
    with torch.set_grad_enabled(_trains(te)):
        return te(ids, return_dict=False)[0]


@torch.no_grad()
def _posterior(vae, pixels: torch.Tensor, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen VAE's posterior mean and standard deviation of a batch of images."""
    dist = vae.encode(pixels.to(device=device, dtype=vae.dtype)).latent_dist
    return dist.mean, dist.std


def encode_batch(pipe, batch: dict[str, Any], device: torch.device | str) -> EncodedBatch:
    """A collated batch through the VAE (no grad) and the text encoder (with grad where it trains), as
    diffusers' scripts do at every step."""
    mean, std = _posterior(pipe.vae, batch["pixel_values"], device)
    return EncodedBatch(mean, std, _text_states(pipe.text_encoder, batch["input_ids"].to(device)))


class EncodedSet:
    """The fine-tune set through the frozen VAE and text encoder, each example encoded once per run.

    diffusers' scripts encode every batch again at every step. The VAE never trains, so an example's posterior
    is the same at every draw; on the toy world's model its encoder costs more than the UNet's step
    (`benchmarks/finetune.py`). Examples are encoded in fixed chunks of indices, and captions all at once in
    sorted order, so what an example encodes to does not depend on when it was first drawn: a resumed run still
    equals an uninterrupted one. The posterior sample is still drawn at every step. Text states are cached only
    while the text encoder is frozen; ``cache=False`` (or random flips, which make each draw another image)
    encodes every batch, as diffusers does.
    """

    def __init__(
        self,
        pipe,
        dataset: FinetuneImageDataset,
        device: torch.device | str,
        cache: bool = True,
        chunk: int = 16,
    ) -> None:
        self.pipe, self.dataset, self.device, self.chunk = pipe, dataset, torch.device(device), chunk
        self.cache = cache and not dataset.random_flip
        self._moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._text: dict[str, torch.Tensor] | None = None

    def batch(self, idx: list[int]) -> EncodedBatch:
        """The examples at ``idx``, in order."""
        if not self.cache:
            return encode_batch(self.pipe, collate([self.dataset[i] for i in idx]), self.device)
        means, stds = zip(*(self._example_moments(i) for i in idx), strict=True)
        return EncodedBatch(torch.stack(means), torch.stack(stds), self._batch_text_states(idx))

    def _example_moments(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        c, j = divmod(i, self.chunk)
        if c not in self._moments:
            members = range(c * self.chunk, min(len(self.dataset), (c + 1) * self.chunk))
            pixels = torch.stack([self.dataset[k]["pixel_values"] for k in members])
            self._moments[c] = _posterior(self.pipe.vae, pixels, self.device)
        mean, std = self._moments[c]
        return mean[j], std[j]

    def _batch_text_states(self, idx: list[int]) -> torch.Tensor:
        captions = [self.dataset.caption(i) for i in idx]
        te = self.pipe.text_encoder
        if _trains(te):
            return _text_states(te, tokenize(self.dataset.tokenizer, captions).to(self.device))
        if self._text is None:
            unique = sorted({self.dataset.caption(i) for i in range(len(self.dataset))})
            self._text = dict(zip(unique, encode_prompts(self.pipe, unique), strict=True))
        return torch.stack([self._text[c] for c in captions])


def _loss(
    pipe,
    noise_scheduler,
    batch: EncodedBatch,
    gen: torch.Generator,
    device: torch.device | str,
    unet: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Epsilon (or v) MSE of diffusers' text-to-image fine-tuning, all noise drawn from ``gen`` on CPU.

    ``unet`` is what runs the prediction (`training_unet`; default ``pipe.unet``)."""
    vae = pipe.vae
    unet = pipe.unet if unet is None else unet
    mean, std = batch.latent_mean, batch.latent_std
    with torch.no_grad():
        eps = torch.randn(mean.shape, generator=gen).to(device=device, dtype=mean.dtype)
        latents = mean + std * eps
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        latents = ((latents - shift) * vae.config.scaling_factor).float()
    noise = torch.randn(latents.shape, generator=gen).to(device)
    bsz = latents.shape[0]
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), generator=gen).to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    pred_type = noise_scheduler.config.prediction_type
    if pred_type == "epsilon":
        target = noise
    elif pred_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {pred_type!r}")
    dtype = pipe.unet.dtype
    pred = unet(noisy.to(dtype), timesteps, batch.text_states.to(dtype), return_dict=False)[0]
    return F.mse_loss(pred.float(), target.float(), reduction="mean")


def training_unet(pipe, cfg: FinetuneConfig) -> torch.nn.Module:
    """The module the training step calls: ``pipe.unet``, or a ``torch.compile`` wrapper of it sharing its
    parameters (``cfg.compile``). The pipe keeps its plain UNet, so saving, loading and later edits see
    the usual module and state-dict keys. Called after the adapters are attached (adding them later would
    recompile)."""
    if cfg.compile == "none":
        return pipe.unet
    return torch.compile(pipe.unet, mode=cfg.compile)


def _peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
            "peak_memory_kind": "cuda_allocated",
        }
    return {
        "peak_memory_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "peak_memory_kind": "host_maxrss",
    }


def finetune(
    pipe,
    dataset_dir: str | os.PathLike,
    cfg: FinetuneConfig,
    out_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    progress: bool = True,
    model_key: str = "",
    cache_encodings: bool = True,
) -> dict[str, Any]:
    """Fine-tune ``pipe`` in place on the set in ``dataset_dir``; write checkpoints, ``final/`` and the log.

    ``model_key`` is the caller's identity of the weights ``pipe`` starts from (`stages.weights_key`).
    Resumes from the latest usable checkpoint in ``out_dir/checkpoints`` made under the same
    `resume_key`; checkpoints of any other key are discarded first. ``cache_encodings`` False encodes every
    batch at every step (`EncodedSet`; the baseline of `benchmarks/finetune.py`). After return, ``pipe`` holds
    the trained model (LoRA as an active, unfused adapter). Returns the training log.
    """
    device = torch.device(device)
    out = Path(out_dir)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    dataset = FinetuneImageDataset(dataset_dir, pipe.tokenizer, resolution)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = _setup_trainable(pipe, cfg, device)
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8
    )
    warm = cfg.lr_warmup_steps
    # diffusers' "constant_with_warmup" schedule.
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / max(1, warm) if s < warm else 1.0
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.mixed_precision == "fp16")

    start, losses, prior_wall, resumed_from = 0, [], 0.0, None
    key = resume_key(cfg, dataset_dir, model_key)
    claim_state_dir(out / CHECKPOINTS, key, what="fine-tune checkpoints")
    ckpt = resume_point(list_checkpoints(out), cfg)
    if ckpt is not None:
        state = torch.load(ckpt / TRAINING_STATE, map_location="cpu", weights_only=False)
        _load_trained_weights(pipe, cfg, ckpt)
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(gen, state["rng"])
        start, losses, prior_wall, resumed_from = (
            state["step"],
            list(state["losses"]),
            state["wall_time_s"],
            str(ckpt),
        )
        logger.info("resuming from %s (step %d of %d)", ckpt, start, cfg.steps)

    autocast = torch.autocast(device.type, dtype=_weight_dtype(cfg), enabled=cfg.mixed_precision != "no")
    pipe.unet.train()
    if cfg.train_text_encoder:
        pipe.text_encoder.train()
    perm_cache: dict[int, torch.Tensor] = {}
    encoded = EncodedSet(pipe, dataset, device, cache=cache_encodings)
    unet = training_unet(pipe, cfg)
    t0 = time.perf_counter()
    bar = progress_bar(
        range(start, cfg.steps), desc="finetune", enabled=progress, initial=start, total=cfg.steps
    )
    with adapter_input_casts_off(pipe, cfg):
        for step in bar:
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(cfg.grad_accum):
                pos = (step * cfg.grad_accum + micro) * cfg.batch_size
                idx = _batch_indices(cfg.seed, len(dataset), pos, cfg.batch_size, perm_cache)
                # Under CUDA graphs ("reduce-overhead") a new step may reuse the last one's graph memory.
                if cfg.compile != "none":
                    torch.compiler.cudagraph_mark_step_begin()
                with autocast:
                    loss = _loss(pipe, noise_scheduler, encoded.batch(idx), gen, device, unet)
                scaler.scale(loss / cfg.grad_accum).backward()
                step_loss += loss.item() / cfg.grad_accum
            scaler.unscale_(optimizer)
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            lr_scheduler.step()
            losses.append(step_loss)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            done = step + 1
            if done % cfg.checkpoint_every == 0:
                _checkpoint(
                    pipe,
                    cfg,
                    out,
                    done,
                    optimizer,
                    lr_scheduler,
                    scaler,
                    gen,
                    losses,
                    prior_wall + time.perf_counter() - t0,
                )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    # This process's steps (and their checkpoints), without set-up or the final save: what a benchmark times.
    loop_s = time.perf_counter() - t0
    pipe.unet.eval()
    pipe.text_encoder.eval()
    for p in params:
        p.requires_grad_(False)

    with atomic_path(out / FINAL, is_dir=True) as tmp:
        _save_weights(pipe, cfg, tmp)
        write_json(tmp / "finetune_config.json", cfg.to_dict())
    log = {
        "losses": losses,
        "steps": cfg.steps,
        "wall_time_s": prior_wall + time.perf_counter() - t0,
        "loop_s": loop_s,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dataset_dir": str(dataset_dir),
        "n_images": len(dataset),
        "encodings_cached": encoded.cache,
        "n_trainable_params": int(sum(p.numel() for p in params)),
        "resumed_from": resumed_from,
        "resume_key": key,
        **_peak_memory(device),
    }
    write_json(out / TRAIN_LOG, log)
    return log


@in_phase(WRITE)
def _checkpoint(
    pipe, cfg, out: Path, step: int, optimizer, lr_scheduler, scaler, gen, losses, wall: float
) -> Path:
    """Write ``checkpoints/step-{step:06d}/`` (weights + `TRAINING_STATE`) as one atomic directory."""
    final = checkpoint_path(out, step)
    with atomic_path(final, is_dir=True) as tmp:
        _save_weights(pipe, cfg, tmp)
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_state(gen),
            "losses": list(losses),
            "wall_time_s": wall,
            "config": cfg.to_dict(),
        }
        torch.save(state, tmp / TRAINING_STATE)
    return final


@in_phase(LOAD)
def load_finetuned(pipe, ckpt_dir: str | os.PathLike):
    """Apply a checkpoint (``final/`` or ``checkpoints/step-*``) to ``pipe`` in place; LoRA is fused.

    Fusing makes the result a plain pipeline (no adapter layers), so evaluation code and
    later weight edits see ordinary weights. Returns ``pipe``.
    """
    d = Path(ckpt_dir)
    if (d / LORA_WEIGHTS).is_file():
        had_adapters = bool(getattr(pipe.unet, "peft_config", None))
        pipe.load_lora_weights(str(d), adapter_name="finetune")
        pipe.fuse_lora(adapter_names=["finetune"], lora_scale=1.0)
        if had_adapters:
            pipe.delete_adapters("finetune")
        else:
            pipe.unload_lora_weights()
    elif (d / "unet").is_dir():
        unet_state = _load_folder_state(d / "unet")
        ref = next(iter(pipe.unet.parameters()))
        pipe.unet.load_state_dict(
            {k: v.to(device=ref.device, dtype=ref.dtype) for k, v in unet_state.items()}
        )
        if (d / "text_encoder").is_dir():
            te_ref = next(iter(pipe.text_encoder.parameters()))
            te_state = _load_folder_state(d / "text_encoder")
            pipe.text_encoder.load_state_dict(
                {k: v.to(device=te_ref.device, dtype=te_ref.dtype) for k, v in te_state.items()}, strict=False
            )
    else:
        raise FileNotFoundError(f"{d} holds neither {LORA_WEIGHTS} nor a unet/ folder")
    return pipe
