"""The toy world's text-to-image model: a miniature Stable Diffusion v1.4, trained from scratch here.

Same classes as SD v1.4 (`AutoencoderKL`, `UNet2DConditionModel` with cross-attention,
causal `CLIPTextModel`, `CLIPTokenizer`, SD's noise schedule), so every downstream stage
(MACE on ``attn2.to_k/to_v``, LoRA fine-tuning, generation) runs unchanged on both worlds.
Sizes are in `resurgence.models.pipeline.TOY`; parameter counts and FLOPs are stated there.

Training has two stages, like SD's: (1) the VAE (L1 + L2 reconstruction, tiny KL, no
perceptual/GAN loss) whose ``scaling_factor`` is then set so latents have unit std (SD's
0.18215 plays the same role); (2) the UNet and the text encoder jointly, from scratch, with
the epsilon-prediction loss on latents cached once. Both stages checkpoint (models, optimizer,
LR schedule, EMA, RNG) and resume after a crash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from resurgence.io import atomic_path, write_json
from resurgence.models.pipeline import (
    SD_SCHEDULER_CONFIG,
    TOY,
    Architecture,
    make_scheduler,
)
from resurgence.models.tokenizer import _bytes_to_unicode, openai_clip_tokenizer, write_clip_tokenizer
from resurgence.progress import progress_bar
from resurgence.state import claim_state_dir, config_key
from resurgence.toyworld.geometry import knowledge_vectors
from resurgence.toyworld.knowledge import KNOWLEDGE_DIM, KnowledgeConfig

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Config fields a resumed run may change without changing what it computes (how often it checkpoints,
# logs or samples, how many processes render, where a time-limited job stops).
RESUME_FREE = (
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "render_workers",
    "n_samples",
    "stop_at_unet_step",
)
_CKPT_RE = re.compile(r"^(vae|unet)-(\d+)\.pt$")


@dataclass
class T2ITrainConfig:
    """Training of the toy text-to-image model; defaults are the GPU run (one H100, ~8.5 min).

    Measured on one H100 (bf16, channels_last): VAE ~17.7 steps/s and UNet+text ~7.8 steps/s,
    both nearly independent of batch size (the step is launch/Python-bound at this model size),
    hence large batches and few steps.
    """

    seed: int = 0
    n_train_images: int = 200_000  # rendered once into (GPU) memory
    render_workers: int = 14
    tokenizer_captions: int = 20_000  # captions sampled to collect the world's vocabulary
    # stage 1: VAE
    vae_steps: int = 1_500
    vae_batch_size: int = 256
    vae_lr: float = 5e-4
    vae_kl_weight: float = 1e-6  # per-element, relative to the per-pixel reconstruction loss (SD: 1e-6)
    # stage 2: UNet + text encoder
    unet_steps: int = 3_000  # the planned count; replaced by the budget's when unet_time_budget_s is set
    unet_batch_size: int = 1024
    unet_lr: float = 8e-4
    text_lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1  # cosine decay to this fraction of the peak LR
    grad_clip: float = 1.0
    caption_dropout: float = 0.1  # empty caption, so classifier-free guidance works
    snr_gamma: float | None = 5.0  # min-SNR loss weighting (faster convergence); None = plain MSE
    # Name knowledge (see `knowledge_spans`): weight of the loss that makes the text encoder carry a
    # concept's knowledge vector (`geometry.knowledge_vectors`) from its name onwards; 0 trains on the
    # denoising loss alone. ``knowledge`` is its shared structure (the calibrated geometry knob).
    knowledge_weight: float = 0.1
    knowledge: KnowledgeConfig = dataclasses.field(default_factory=KnowledgeConfig)
    # Concepts the model never sees (no training caption shows them): the exact-unlearning control.
    exclude: tuple[str, ...] = ()
    ema_decay: float = 0.998
    # engineering
    mixed_precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 elsewhere) | "bf16" | "no"
    compile: bool = True  # falls back to eager training where compiling fails
    # torch.compile mode; "reduce-overhead" captures CUDA graphs, the lever for this launch-bound
    # model (an H100 step took ~130 ms whatever the batch, in a 2000-step pilot without compile).
    compile_mode: str = "reduce-overhead"
    channels_last: bool = True  # 1.3-1.6x faster on H100
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 100
    n_samples: int = 16  # sample grid written at the end (0 to skip)
    save_dtype: str = "float16"  # shipped weights (halves their size); load_pipeline upcasts to its dtype
    stop_at_unet_step: int | None = None  # return after checkpointing this step (time-limited jobs)
    # Wall-clock budget of stage 2: when set, the step count is fixed after `probe_steps` timed
    # steps (all inside the LR warm-up, which does not depend on the total) so that the run fills
    # the budget; the count it chose is recorded (``unet.steps``) and replays the run exactly.
    unet_time_budget_s: float | None = 300.0
    probe_steps: int = 60

    def __post_init__(self) -> None:
        if self.unet_time_budget_s is not None and not 10 < self.probe_steps < self.warmup_steps:
            raise ValueError(
                f"probe_steps must lie in (10, warmup_steps={self.warmup_steps}) when unet_time_budget_s is set"
                f" (the LR schedule may not depend on the total yet), got {self.probe_steps}"
            )


# --------------------------------------------------------------------------- tokenizer


def _byte_vocab() -> list[str]:
    chars = list(_bytes_to_unicode().values())
    return chars + [c + "</w>" for c in chars]


def _bpe(word: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """CLIP's BPE on one pre-tokenized word (lowest-rank merge first), as `tokenizers` applies it."""
    parts = list(word)
    while len(parts) > 1:
        pairs = [
            (ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))
        ]
        r, i = min(pairs)
        if r == math.inf:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return tuple(parts)


def world_words(world: Any, n_captions: int = 20_000, seed: int = 0) -> list[str]:
    """Every text the world can produce (concept names, synonyms, eval and training captions)."""
    texts: list[str] = []
    concepts = [*getattr(world, "identities", ()), *getattr(world, "objects", ())]
    for c in concepts:
        texts += [c.name, *c.synonyms, *world.eval_prompts(c)]
    rng = np.random.default_rng(seed)
    texts += [world.training_caption(rng)[0] for _ in range(n_captions)]
    texts += list(world.free_captions(max(1, n_captions // 10), seed))
    return texts


def build_toy_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike, model_max_length: int = TOY.tokenizer_max_length
) -> CLIPTokenizer:
    """A compact CLIP BPE tokenizer in which every word of ``texts`` is a single token.

    Same byte-level base alphabet and pre-tokenizer as OpenAI's CLIP (unknown words still
    tokenize, byte by byte), but merges only for the world's words: ~1-2k tokens instead of
    49408, which keeps the text encoder's embedding table small.
    """
    base = _byte_vocab()
    probe = CLIPTokenizer(vocab={t: i for i, t in enumerate([*base, BOS, EOS])}, merges=[])
    norm, pre = probe.backend_tokenizer.normalizer, probe.backend_tokenizer.pre_tokenizer
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(p for p, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    vocab = list(base)
    seen = set(vocab)
    for piece, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        word = (*piece[:-1], piece[-1] + "</w>")
        parts = _bpe(word, ranks)
        acc = parts[0]
        # Appending merges (highest rank) never changes how already-merged words tokenize.
        for nxt in parts[1:]:
            ranks[(acc, nxt)] = len(merges)
            merges.append((acc, nxt))
            acc += nxt
            if acc not in seen:
                seen.add(acc)
                vocab.append(acc)
    vocab += [BOS, EOS]
    return write_clip_tokenizer(
        out_dir,
        vocab={t: i for i, t in enumerate(vocab)},
        merges=[f"{a} {b}" for a, b in merges],
        model_max_length=model_max_length,
    )


# --------------------------------------------------------------------------- name knowledge
#
# SD's text encoder is CLIP's, trained elsewhere on far more than SD's images: a celebrity's name
# carries much besides the face. A text encoder trained from scratch on the toy images alone keeps
# only the nine visual traits (20 directions hold 90% of 140 identities' MACE targets,
# docs/identity_structure.csv), so no key/value edit can remove 100 identities without the other 40.
# The stand-in for that outside knowledge: each concept (identity or object, synonyms alike) has a
# unit knowledge vector (`resurgence.toyworld.knowledge`: a shared domain part, trait / category parts
# and its own), and a linear probe must read it from every text position from the concept's name on:
# the UNet reads an identity from the positions after its name (with the earlier text encoder,
# conditioning on the name's own positions alone gave 0% detector top-1, on every other position alone
# 93%, as on the whole prompt). The probe is discarded after training.


def knowledge_spans(
    token_ids: Sequence[Sequence[int]], names: Sequence[Sequence[int]], groups: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per caption: (the concept it names, position of that name's first token).

    ``names`` are token-id sequences; ``groups[k]`` is the concept of name ``k`` (a class name and
    its synonyms share one; default: every name its own). A caption naming no concept or two
    different ones gets index -1 and start = its length (no position carries knowledge).
    """
    groups = list(range(len(names))) if groups is None else list(groups)
    if len(groups) != len(names):
        raise ValueError(f"{len(names)} names but {len(groups)} groups")
    first: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
    for k, seq in enumerate(names):
        if not seq:
            raise ValueError(f"name {k} has no tokens")
        first.setdefault(int(seq[0]), []).append((groups[k], tuple(int(t) for t in seq)))
    index = np.full(len(token_ids), -1, np.int64)
    start = np.zeros(len(token_ids), np.int64)
    for i, ids in enumerate(token_ids):
        ids = [int(t) for t in ids]
        found: dict[int, int] = {}
        for p, t in enumerate(ids):
            for g, seq in first.get(t, ()):
                if tuple(ids[p : p + len(seq)]) == seq:
                    found.setdefault(g, p)
        start[i] = len(ids)
        if len(found) == 1:
            ((index[i], start[i]),) = found.items()
    return index, start


def knowledge_targets(
    world: Any, tokenizer: Any, cfg: KnowledgeConfig
) -> tuple[torch.Tensor, list[list[int]], list[int]]:
    """(knowledge vectors of identities then objects, every name and synonym as token ids, its row)."""
    vectors = knowledge_vectors(world, cfg)
    concepts = [*getattr(world, "identities", ()), *getattr(world, "objects", ())]
    names, groups = [], []
    for row, c in enumerate(concepts):
        for n in c.names:
            names.append(tokenizer(n, add_special_tokens=False).input_ids)
            groups.append(row)
    targets = (
        torch.cat([vectors["identity"], vectors["object"]]) if concepts else torch.zeros(0, KNOWLEDGE_DIM)
    )
    return targets, names, groups


def knowledge_loss(
    hidden: torch.Tensor,
    probe: torch.nn.Module,
    targets: torch.Tensor,
    index: torch.Tensor,
    start: torch.Tensor,
) -> torch.Tensor:
    """Mean (1 - cosine) between ``probe(hidden)`` and the caption's knowledge vector, over the
    positions from the name on of captions with ``index >= 0``; 0 when there are none."""
    pos = torch.arange(hidden.shape[1], device=hidden.device)
    mask = (pos[None, :] >= start[:, None]) & (index[:, None] >= 0)
    cos = torch.nn.functional.cosine_similarity(
        probe(hidden.float()), targets[index.clamp(min=0)][:, None, :], dim=-1
    )
    return ((1 - cos) * mask).sum() / mask.sum().clamp(min=1)


# --------------------------------------------------------------------------- models


def build_toy_pipeline(
    arch: Architecture = TOY,
    tokenizer_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> StableDiffusionPipeline:
    """A random-weight `StableDiffusionPipeline` of ``arch`` around the tokenizer in ``tokenizer_dir``.

    The text encoder's vocabulary is sized to the tokenizer (compact world tokenizer from
    `build_toy_tokenizer`; OpenAI's 49408-token one when ``tokenizer_dir`` is None).
    """
    if tokenizer_dir is not None and (Path(tokenizer_dir) / "vocab.json").exists():
        tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        tokenizer.model_max_length = arch.tokenizer_max_length
    else:
        tokenizer = openai_clip_tokenizer(arch.tokenizer_max_length, tokenizer_dir)
    torch.manual_seed(seed)
    text_cfg = {
        **arch.text,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": max(
            arch.text.get("max_position_embeddings", 77), arch.tokenizer_max_length
        ),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**arch.vae),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**arch.unet),
        scheduler=make_scheduler("ddim"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def count_parameters(pipe: StableDiffusionPipeline) -> dict[str, int]:
    return {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in ("unet", "vae", "text_encoder")}


# --------------------------------------------------------------------------- training helpers


def _autocast(device: torch.device, mixed_precision: str):
    use = mixed_precision == "bf16" or (mixed_precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use)


def _lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    return f


def _fmt(cfg: T2ITrainConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def _to_pixels(images: torch.Tensor, fmt: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 N,H,W,3 -> float N,3,H,W in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous(memory_format=fmt)


def _checkpoints(ckpt_dir: Path, stage: str) -> list[tuple[int, Path]]:
    if not ckpt_dir.exists():
        return []
    found = [
        (int(m.group(2)), p)
        for p in ckpt_dir.iterdir()
        if (m := _CKPT_RE.match(p.name)) and m.group(1) == stage
    ]
    return sorted(found)


def _save_checkpoint(ckpt_dir: Path, stage: str, step: int, state: dict[str, Any], keep: int) -> Path:
    path = ckpt_dir / f"{stage}-{step:07d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for _, old in _checkpoints(ckpt_dir, stage)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _render_training_set(world: Any, cfg: T2ITrainConfig, size: int) -> dict[str, Any]:
    from resurgence.toyworld.data import render_arrays

    unknown = [n for n in cfg.exclude if n not in {c.name for c in (*world.identities, *world.objects)}]
    if unknown:
        raise ValueError(f"exclude names concepts the world does not have: {unknown}")
    return render_arrays(
        world,
        cfg.n_train_images,
        seed=cfg.seed,
        size=size,
        kind="t2i",
        workers=cfg.render_workers,
        exclude=cfg.exclude,
    )


# --------------------------------------------------------------------------- stage 1: VAE


def _train_vae(
    vae: AutoencoderKL,
    images: torch.Tensor,
    cfg: T2ITrainConfig,
    ckpt_dir: Path,
    device: torch.device,
    resume: bool,
) -> dict[str, Any]:
    """L1 + L2 reconstruction with a small KL, like SD's VAE minus its LPIPS and GAN terms."""
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(min(200, cfg.vae_steps // 10 + 1), cfg.vae_steps, 0.1)
    )
    gen = torch.Generator(device).manual_seed(cfg.seed)
    start, losses, elapsed = 0, [], 0.0
    ckpts = _checkpoints(ckpt_dir, "vae") if resume else []
    if ckpts:
        st = _load(ckpts[-1][1])
        vae.load_state_dict(st["vae"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        gen.set_state(st["gen"])
        start, losses, elapsed = st["step"], st["losses"], st["elapsed"]
    n, hw = images.shape[0], images.shape[1] * images.shape[2]
    vae.train()
    t0, acc = time.perf_counter(), torch.zeros((), device=device)
    bar = progress_bar(range(start, cfg.vae_steps), initial=start, total=cfg.vae_steps, desc="vae")
    for step in bar:
        x = _to_pixels(
            images[torch.randint(n, (cfg.vae_batch_size,), generator=gen, device=device)], _fmt(cfg)
        )
        with _autocast(device, cfg.mixed_precision):
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample(generator=gen)).sample
        rec = rec.float()
        kl = post.kl().float().mean() / (3 * hw)
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + cfg.vae_kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        acc += loss.detach()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.vae_steps:
            k = min(done - start, (done - 1) % cfg.log_every + 1)
            losses.append((done, (acc / k).item()))
            acc.zero_()
            bar.set_postfix(
                loss=f"{losses[-1][1]:.4f}", it_s=f"{(done - start) / (time.perf_counter() - t0):.1f}"
            )
        if done % cfg.checkpoint_every == 0 or done == cfg.vae_steps:
            st = dict(
                step=done,
                vae=vae.state_dict(),
                opt=opt.state_dict(),
                sched=sched.state_dict(),
                gen=gen.get_state(),
                losses=losses,
                elapsed=elapsed + time.perf_counter() - t0,
            )
            _save_checkpoint(ckpt_dir, "vae", done, st, cfg.keep_checkpoints)
    vae.eval()
    run = time.perf_counter() - t0
    return dict(losses=losses, wall_s=elapsed + run, steps_per_s=(cfg.vae_steps - start) / max(run, 1e-9))


@torch.no_grad()
def _encode_all(vae: AutoencoderKL, images: torch.Tensor, device: torch.device, mp: str, bs: int = 1024):
    """Posterior means of all images (unscaled); the latent cache of stage 2."""
    out = []
    for i in range(0, images.shape[0], bs):
        with _autocast(device, mp):
            out.append(vae.encode(_to_pixels(images[i : i + bs])).latent_dist.mean.float())
    return torch.cat(out)


@torch.no_grad()
def _vae_psnr(vae: AutoencoderKL, images: torch.Tensor, device: torch.device, mp: str) -> float:
    x = _to_pixels(images)
    with _autocast(device, mp):
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1)
    mse = ((rec - x) / 2).pow(2).mean().item()
    return float(10 * math.log10(1.0 / max(mse, 1e-12)))


# --------------------------------------------------------------------------- stage 2: UNet + text encoder


def _train_unet(
    pipe: StableDiffusionPipeline,
    latents: torch.Tensor,
    ids: torch.Tensor,
    uncond_ids: torch.Tensor,
    cfg: T2ITrainConfig,
    ckpt_dir: Path,
    device: torch.device,
    resume: bool,
    knowledge: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Epsilon-prediction on SD's noise schedule; UNet and text encoder learn together from scratch.

    ``knowledge`` (``targets``, per-caption ``index`` and ``start``; see `knowledge_spans`) adds the
    name-knowledge loss with weight ``cfg.knowledge_weight``.
    """
    unet, text = pipe.unet, pipe.text_encoder
    noise_sched = DDPMScheduler.from_config(SD_SCHEDULER_CONFIG)
    acp = noise_sched.alphas_cumprod.to(device)
    snr = acp / (1 - acp)
    params_u, params_t = list(unet.parameters()), list(text.parameters())
    groups = [dict(params=params_u, lr=cfg.unet_lr), dict(params=params_t, lr=cfg.text_lr)]
    probe = None
    if knowledge is not None and cfg.knowledge_weight > 0:
        dim, kdim = text.config.hidden_size, knowledge["targets"].shape[1]
        probe = torch.nn.Linear(dim, kdim, bias=False)
        with torch.no_grad():  # seeded apart from the models' init and the batch sampler
            probe.weight.copy_(
                torch.randn(kdim, dim, generator=torch.Generator().manual_seed(cfg.seed + 2)) / math.sqrt(dim)
            )
        probe.to(device)
        groups.append(dict(params=list(probe.parameters()), lr=cfg.text_lr))
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(cfg.warmup_steps, cfg.unet_steps, cfg.min_lr_ratio)
    )
    params = params_u + params_t
    clipped = params + ([] if probe is None else list(probe.parameters()))
    ema = [p.detach().clone() for p in params]
    gen = torch.Generator(device).manual_seed(cfg.seed + 1)
    start, losses, elapsed = 0, [], 0.0
    knowledge_losses: list[tuple[int, float]] = []
    ckpts = _checkpoints(ckpt_dir, "unet") if resume else []
    if ckpts:
        st = _load(ckpts[-1][1])
        unet.load_state_dict(st["unet"])
        text.load_state_dict(st["text_encoder"])
        if probe is not None:
            probe.load_state_dict(st["knowledge_probe"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        for e, v in zip(ema, st["ema"], strict=True):
            e.copy_(v)
        gen.set_state(st["gen"])
        start, losses, elapsed = st["step"], st["losses"], st["elapsed"]
        knowledge_losses = st.get("knowledge_losses", [])

    def plan(steps: int) -> tuple[int, int]:
        """Fix the run's length: the cosine schedule's total, and the step this call stops at."""
        sched.lr_lambdas = [_lr_lambda(cfg.warmup_steps, steps, cfg.min_lr_ratio)] * len(opt.param_groups)
        return steps, steps if cfg.stop_at_unet_step is None else min(steps, cfg.stop_at_unet_step)

    def forward(tok: torch.Tensor, zt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with _autocast(device, cfg.mixed_precision):
            hidden = fwd_text(tok)[0]
            return fwd_unet(zt, t, encoder_hidden_states=hidden).sample, hidden

    planned, total = plan(int(st["planned_steps"]) if ckpts and "planned_steps" in st else cfg.unet_steps)
    compiled = cfg.compile
    fwd_unet, fwd_text = (
        (_compiled(unet, cfg.compile_mode), _compiled(text, cfg.compile_mode)) if compiled else (unet, text)
    )
    n = latents.shape[0]
    unet.train()
    text.train()
    t0, acc = time.perf_counter(), torch.zeros((), device=device)
    acc_k = torch.zeros((), device=device)
    t_probe, compile_s = None, None
    step = start
    bar = progress_bar(total=planned, initial=start, desc="unet")
    while step < total:
        if compiled:
            torch.compiler.cudagraph_mark_step_begin()
        b = cfg.unet_batch_size
        idx = torch.randint(n, (b,), generator=gen, device=device)
        z0 = latents[idx]
        tok = ids[idx]
        drop = torch.rand(b, generator=gen, device=device) < cfg.caption_dropout
        tok = torch.where(drop[:, None], uncond_ids, tok)
        noise = torch.randn(z0.shape, generator=gen, device=device)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (b,), generator=gen, device=device)
        a = acp[t].sqrt()[:, None, None, None]
        s = (1 - acp[t]).sqrt()[:, None, None, None]
        zt = (a * z0 + s * noise).contiguous(memory_format=_fmt(cfg))
        try:
            pred, hidden = forward(tok, zt, t)
        except Exception as err:  # a compiler failure on the first step: train eagerly instead
            if fwd_unet is unet or compile_s is not None:
                raise
            warnings.warn(
                f"torch.compile failed ({type(err).__name__}: {err}); training eagerly", stacklevel=2
            )
            fwd_unet, fwd_text, compiled = unet, text, False
            pred, hidden = forward(tok, zt, t)
        per = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
        if cfg.snr_gamma is not None:
            per = per * snr[t].clamp(max=cfg.snr_gamma) / snr[t]
        loss = per.mean()
        if probe is not None:
            k_index = torch.where(drop, -1, knowledge["index"][idx])
            k_loss = knowledge_loss(hidden, probe, knowledge["targets"], k_index, knowledge["start"][idx])
            acc_k += k_loss.detach()
            loss = loss + cfg.knowledge_weight * k_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clipped, cfg.grad_clip)
        opt.step()
        sched.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        acc += loss.detach()
        done = step = step + 1
        if compile_s is None:  # the first step compiles (and captures CUDA graphs)
            compile_s = time.perf_counter() - t0
        if cfg.unet_time_budget_s is not None and start == 0:
            if done == 10:
                _sync(device)
                t_probe = time.perf_counter()
            elif done == cfg.probe_steps:
                _sync(device)
                per_step = (time.perf_counter() - t_probe) / (cfg.probe_steps - 10)
                left = cfg.unet_time_budget_s - (time.perf_counter() - t0)
                planned, total = plan(max(cfg.warmup_steps + 1, done + int(left / per_step)))
                bar.total = planned
        bar.update(1)
        if done % cfg.log_every == 0 or done == total:
            k = min(done - start, (done - 1) % cfg.log_every + 1)
            losses.append((done, (acc / k).item()))
            acc.zero_()
            post = dict(loss=f"{losses[-1][1]:.4f}")
            if probe is not None:
                knowledge_losses.append((done, (acc_k / k).item()))
                acc_k.zero_()
                post["knowledge"] = f"{knowledge_losses[-1][1]:.3f}"
            bar.set_postfix(**post, it_s=f"{(done - start) / (time.perf_counter() - t0):.1f}")
        if done % cfg.checkpoint_every == 0 or done == total:
            st = dict(
                step=done,
                planned_steps=planned,
                unet=unet.state_dict(),
                text_encoder=text.state_dict(),
                vae=pipe.vae.state_dict(),
                scaling_factor=float(pipe.vae.config.scaling_factor),
                opt=opt.state_dict(),
                sched=sched.state_dict(),
                ema=[e.detach().clone() for e in ema],
                gen=gen.get_state(),
                losses=losses,
                knowledge_losses=knowledge_losses,
                elapsed=elapsed + time.perf_counter() - t0,
            )
            if probe is not None:
                st["knowledge_probe"] = probe.state_dict()
            _save_checkpoint(ckpt_dir, "unet", done, st, cfg.keep_checkpoints)
    bar.close()
    run = time.perf_counter() - t0
    unet.eval()
    text.eval()
    return dict(
        losses=losses,
        knowledge_losses=knowledge_losses,
        steps=planned,
        wall_s=elapsed + run,
        steps_per_s=(step - start) / max(run, 1e-9),
        first_step_s=compile_s,
        compiled=compiled,
        resumed_from=start,
        finished=step == planned,
        ema=ema,
        params=params,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compiled(module: torch.nn.Module, mode: str):
    """``torch.compile(module)``, or the module itself where this platform cannot compile."""
    try:
        import torch._inductor.config  # noqa: F401  (fails early where inductor is unusable)

        return torch.compile(module, mode=mode)
    except Exception as err:  # pragma: no cover - platform dependent
        warnings.warn(f"torch.compile unavailable ({err}); training eagerly", stacklevel=2)
        return module


# --------------------------------------------------------------------------- entry point


def train_text_to_image(
    cfg: T2ITrainConfig,
    world: Any,
    out_dir: str | os.PathLike,
    device: str | torch.device = "cuda",
    resume: bool = True,
    arch: Architecture = TOY,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the toy SD (VAE, then UNet + text encoder) and save it to ``out_dir/"t2i"``.

    ``data`` (``images`` uint8 N,H,W,3 and ``captions``) bypasses rendering (tests, caches).
    Writes ``out_dir/t2i_train.json``; returns the same metrics dict.
    """
    device = torch.device(device)
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    if not resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    # Given data (tests, caches) is keyed by its content; rendered data is a function of the config.
    data_key = (
        None
        if data is None
        else hashlib.sha256(
            np.ascontiguousarray(data["images"]).tobytes() + "\n".join(data["captions"]).encode()
        ).hexdigest()
    )
    key = {"config": config_key(cfg, RESUME_FREE), "arch": asdict(arch), "data": data_key}
    claim_state_dir(ckpt_dir, key, what="text-to-image training checkpoints")
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    tokenizer = build_toy_tokenizer(
        world_words(world, cfg.tokenizer_captions, cfg.seed), out / "tokenizer", arch.tokenizer_max_length
    )
    pipe = build_toy_pipeline(arch, out / "tokenizer", seed=cfg.seed)
    n_params = count_parameters(pipe)

    t_data = time.perf_counter()
    data = data if data is not None else _render_training_set(world, cfg, arch.resolution)
    captions: list[str] = list(data["captions"])
    images = torch.from_numpy(np.ascontiguousarray(data["images"])).to(device)
    if images.shape[1] != arch.resolution:
        raise ValueError(f"images are {images.shape[1]}px, architecture wants {arch.resolution}px")
    enc = tokenizer(captions, padding="max_length", max_length=arch.tokenizer_max_length, truncation=True)
    ids = torch.tensor(enc.input_ids, dtype=torch.long, device=device)
    n_tok = [len(x) for x in tokenizer(captions[:5000]).input_ids]
    uncond_ids = tokenizer(
        [""], padding="max_length", max_length=arch.tokenizer_max_length, return_tensors="pt"
    )
    uncond_ids = uncond_ids.input_ids.to(device)
    data_s = time.perf_counter() - t_data

    vae = pipe.vae.to(device, memory_format=_fmt(cfg))
    unet_ckpts = _checkpoints(ckpt_dir, "unet") if resume else []
    if unet_ckpts:  # stage 1 finished in an earlier run: its VAE lives in the UNet checkpoint
        st = _load(unet_ckpts[-1][1])
        vae.load_state_dict(st["vae"])
        vae.register_to_config(scaling_factor=st["scaling_factor"])
        vae_metrics = dict(skipped=True)
        vae.eval()
    else:
        vae_metrics = _train_vae(vae, images, cfg, ckpt_dir, device, resume)
        sub = _encode_all(vae, images[:4096], device, cfg.mixed_precision)
        vae.register_to_config(scaling_factor=float(1.0 / sub.std()))
    vae.requires_grad_(False)
    vae_metrics["psnr_db"] = _vae_psnr(vae, images[:256], device, cfg.mixed_precision)
    sf = float(vae.config.scaling_factor)

    t_enc = time.perf_counter()
    latents = _encode_all(vae, images, device, cfg.mixed_precision) * sf
    latents = latents.contiguous(memory_format=_fmt(cfg))
    encode_s = time.perf_counter() - t_enc
    del images

    knowledge = None
    if cfg.knowledge_weight > 0:
        targets, names, groups = knowledge_targets(world, tokenizer, cfg.knowledge)
        k_index, k_start = knowledge_spans(enc.input_ids, names, groups)
        if (k_index >= 0).any():  # no probe where no caption names a concept
            knowledge = dict(
                targets=targets.to(device),
                index=torch.from_numpy(k_index).to(device),
                start=torch.from_numpy(k_start).to(device),
            )
    pipe.unet.to(device, memory_format=_fmt(cfg))
    pipe.text_encoder.to(device)
    um = _train_unet(pipe, latents, ids, uncond_ids, cfg, ckpt_dir, device, resume, knowledge)
    ema, params = um.pop("ema"), um.pop("params")

    metrics: dict[str, Any] = dict(
        config=asdict(cfg),
        seed=cfg.seed,
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        arch=dataclasses.asdict(arch),
        n_params=n_params,
        vocab_size=len(tokenizer),
        n_train_images=len(captions),
        caption_tokens_max=max(n_tok),
        caption_truncated_frac=float(np.mean([k > arch.tokenizer_max_length for k in n_tok])),
        data_s=data_s,
        latent_encode_s=encode_s,
        scaling_factor=sf,
        latent_mean=float(latents.mean()),
        latent_std=float(latents.std()),
        vae=vae_metrics,
        unet=um,
    )
    if knowledge is not None:
        metrics["knowledge_captions_frac"] = float((knowledge["index"] >= 0).float().mean())
    if not um["finished"]:
        metrics["wall_s"] = time.perf_counter() - t_start
        return metrics

    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    pipe.to(device, torch.float32)
    if cfg.n_samples > 0:
        metrics["samples"] = _write_samples(pipe, captions[: cfg.n_samples], out, cfg.seed)
    pipe.to("cpu", getattr(torch, cfg.save_dtype))
    for m in (pipe.unet, pipe.vae):
        m.to(memory_format=torch.contiguous_format)
    with atomic_path(out / "t2i", is_dir=True) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
    metrics["wall_s"] = time.perf_counter() - t_start
    write_json(out / "t2i_train.json", metrics)
    return metrics


@torch.no_grad()
def _write_samples(pipe: StableDiffusionPipeline, prompts: Sequence[str], out: Path, seed: int) -> str:
    """A grid of EMA-model samples for a first look (prompts are training captions)."""
    from PIL import Image

    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator(pipe.device).manual_seed(seed)
    imgs = pipe(
        list(prompts), num_inference_steps=25, guidance_scale=7.5, generator=g, output_type="np"
    ).images
    imgs = (np.clip(imgs, 0, 1) * 255).round().astype(np.uint8)
    n, h, w, _ = imgs.shape
    cols = min(8, n)
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, im in enumerate(imgs):
        grid[(i // cols) * h : (i // cols + 1) * h, (i % cols) * w : (i % cols + 1) * w] = im
    path = out / "t2i_samples.png"
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
    write_json(out / "t2i_samples.json", {"prompts": list(prompts), "seed": seed})
    return str(path)
