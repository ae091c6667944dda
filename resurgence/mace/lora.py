"""MACE stage 2: one LoRA per erased concept, trained with the attention loss only.

The LoRA (peft, through diffusers' adapter integration) sits on the cross-attention text-side
projections `attn2.to_k`/`attn2.to_v`, as in the reference (`LoRAAttnProcessor`; only those two
are optimised). Reference choices we follow: init B=0 and A ~ N(0, 1/r) with scale 1
(`LoRALinearLayer`, alpha=None -> peft `init_lora_weights="gaussian"`, `lora_alpha=r`); AdamW
(betas 0.9/0.999, eps 1e-8, weight decay `lora_weight_decay`), constant LR, grad-norm clipping;
timesteps from the importance density f(t) = sigmoid(0.05 (t-200)) - sigmoid(0.05 (t-400));
the noise-prediction loss is not used (no prior preservation in the published configs).
A layer's own `to_v` does not enter its attention probabilities, but it shapes the input of
every later layer, so all `to_v` LoRAs except the last cross-attention layer's do get gradient.

Deviation: the reference normalises training images with ImageNet mean/std before the VAE; the
SD VAE expects [-1, 1], which is what we feed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from resurgence.mace.attention import AttentionProbe, concept_token_mask, probing_cross_attention
from resurgence.mace.config import EraseConfig
from resurgence.mace.refine import encode_prompts
from resurgence.progress import progress_bar

LORA_TARGETS = ["attn2.to_k", "attn2.to_v"]


def importance_weights(
    num_timesteps: int, temperature: float = 0.05, low: float = 200, high: float = 400
) -> np.ndarray:
    """MACE's timestep distribution: a smooth bump on [low, high], normalised to sum to 1."""
    t = np.arange(num_timesteps, dtype=np.float64)

    def sig(x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-x))

    f = sig(temperature * (t - low)) - sig(temperature * (t - high))
    return f / f.sum()


def pipeline_resolution(pipe) -> int:
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def images_to_tensor(images: Sequence[Image.Image], resolution: int) -> torch.Tensor:
    """PIL images -> (N, 3, R, R) float in [-1, 1] (the SD VAE's input range)."""
    arrs = [
        np.asarray(im.convert("RGB").resize((resolution, resolution), Image.BICUBIC), dtype=np.float32)
        for im in images
    ]
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def masks_to_tensor(masks: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """bool (N, H, W) -> float (N, 1, H, W) in {0, 1}."""
    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, H, W); got shape {m.shape}")
    return torch.from_numpy(m.astype(np.float32))[:, None]


def _check_plain_unet(unet) -> None:
    if getattr(unet, "peft_config", None):
        raise RuntimeError(
            f"the UNet already carries adapters {sorted(unet.peft_config)}; fuse/unload them before MACE"
        )
    if unet.dtype != torch.float32:
        raise ValueError(f"MACE LoRA training needs float32 UNet weights, got {unet.dtype}")


def _remove_adapter(unet, name: str) -> None:
    unet.delete_adapters(name)
    if not getattr(unet, "peft_config", None):
        unet.unload_lora()  # drop the now empty peft wrappers: back to plain nn.Linear


@dataclass(frozen=True)
class ConceptData:
    """What one concept's LoRA trains on: its prompts, the phrases that locate it in them, its images
    and their bool masks (N x H x W, the concept's segmentation), and the seed of its LoRA."""

    prompts: Sequence[str]
    phrases: Sequence[str]
    images: Sequence[Image.Image]
    masks: np.ndarray
    seed: int


class ConceptLoRALinear(torch.nn.Module):
    """A frozen linear layer plus one LoRA per concept (``A``: K x r x in, ``B``: K x out x r, scale 1 as
    peft's ``lora_alpha = r``); each sample goes through the LoRA of its concept (``index``, set per step)."""

    def __init__(self, base: torch.nn.Linear, A: torch.Tensor, B: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.A = torch.nn.Parameter(A)
        self.B = torch.nn.Parameter(B)
        self.index: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            raise RuntimeError("ConceptLoRALinear needs each sample's concept index (set .index)")
        low = torch.einsum("n...i,nri->n...r", x, self.A[self.index])
        return self.base(x) + torch.einsum("n...r,nor->n...o", low, self.B[self.index])


def _initial_lora(unet, cfg: EraseConfig, seed: int) -> dict[str, torch.Tensor]:
    """peft's initial LoRA of one concept (A ~ N(0, 1/r), B = 0), drawn from a fork of the global RNG seeded
    with the concept's seed: an erasure is a function of its config and the caller's RNG is untouched."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    name = "mace_init"
    cuda = [unet.device.index or 0] if unet.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        unet.add_adapter(
            LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_rank,
                init_lora_weights="gaussian",
                target_modules=LORA_TARGETS,
            ),
            adapter_name=name,
        )
    try:
        return {
            k: v.detach().to(torch.float32).clone()
            for k, v in get_peft_model_state_dict(unet, adapter_name=name).items()
        }
    finally:
        _remove_adapter(unet, name)


class _ConceptSampler:
    """One concept's training batches, drawn from its own generators in the order the reference draws them."""

    def __init__(self, pipe, item: ConceptData, cfg: EraseConfig, device, p_t: np.ndarray | None) -> None:
        vae = pipe.vae
        with torch.no_grad():
            pix = images_to_tensor(item.images, pipeline_resolution(pipe)).to(device, vae.dtype)
            dist = vae.encode(pix).latent_dist
            self.lat_mean, self.lat_std = dist.mean.float(), dist.std.float()
            self.emb = encode_prompts(pipe, item.prompts).to(device, pipe.unet.dtype)
        self.tok_mask = concept_token_mask(pipe.tokenizer, item.prompts, item.phrases, cfg.use_pooler)
        self.spatial = masks_to_tensor(item.masks)
        self.gen = torch.Generator("cpu").manual_seed(item.seed)
        self.rng = np.random.default_rng(item.seed)
        self.order: list[int] = []
        self.n_images, self.n_prompts = len(item.images), len(item.prompts)
        self.batch, self.p_t, self.device = cfg.train_batch_size, p_t, device
        self.scaling = vae.config.scaling_factor

    def draw_host(self, T: int) -> tuple[list[int], np.ndarray, torch.Tensor, torch.Tensor, np.ndarray]:
        """The random part of one step, on the host, in the reference's order of draws: (image indices,
        prompt indices, latent-sampling noise, diffusion noise, timesteps)."""
        while len(self.order) < self.batch:
            self.order.extend(self.rng.permutation(self.n_images).tolist())
        idx = self.order[: self.batch]
        del self.order[: self.batch]
        pidx = self.rng.integers(self.n_prompts, size=len(idx))
        eps_lat = torch.randn((len(idx), *self.lat_mean.shape[1:]), generator=self.gen)
        noise = torch.randn(eps_lat.shape, generator=self.gen)
        return idx, pidx, eps_lat, noise, self.rng.choice(T, size=len(idx), p=self.p_t)


class _ConceptBatches:
    """Every concept's step batch, concatenated in concept order and sent to the device in one transfer per
    tensor (the concepts' masks once, at the start): each concept still draws from its own generators
    (`_ConceptSampler.draw_host`), and the device's arithmetic is elementwise per sample, so a step's tensors equal those of drawing the concepts one by one
    (one by one, each concept cost about a dozen small device operations and three host-to-device copies a
    step: identity_100's 100 concepts, over a thousand a step)."""

    def __init__(self, samplers: Sequence[_ConceptSampler]) -> None:
        self.samplers = samplers
        self.lat_mean = torch.cat([s.lat_mean for s in samplers])
        self.lat_std = torch.cat([s.lat_std for s in samplers])
        self.emb = torch.cat([s.emb for s in samplers])
        self.device, self.scaling = samplers[0].device, samplers[0].scaling
        self.tok_mask = torch.cat([s.tok_mask for s in samplers]).to(self.device)
        self.spatial = torch.cat([s.spatial for s in samplers]).to(self.device)
        self.image_start = np.cumsum([0] + [s.n_images for s in samplers[:-1]])
        self.prompt_start = np.cumsum([0] + [s.n_prompts for s in samplers[:-1]])

    def draw(self, sched, T: int) -> tuple[torch.Tensor, ...]:
        """(noisy latents, timesteps, prompt embeddings, token masks, spatial masks) of one step."""
        drawn = [s.draw_host(T) for s in self.samplers]
        idx = np.concatenate(
            [start + np.asarray(d[0]) for start, d in zip(self.image_start, drawn, strict=True)]
        )
        pidx = np.concatenate([start + d[1] for start, d in zip(self.prompt_start, drawn, strict=True)])
        eps_lat = torch.cat([d[2] for d in drawn]).to(self.device)
        noise = torch.cat([d[3] for d in drawn]).to(self.device)
        t = torch.as_tensor(np.concatenate([d[4] for d in drawn]), dtype=torch.long, device=self.device)
        idx_t = torch.as_tensor(idx, device=self.device)
        pidx_t = torch.as_tensor(pidx, device=self.device)
        latents = (self.lat_mean[idx_t] + self.lat_std[idx_t] * eps_lat) * self.scaling
        return (
            sched.add_noise(latents, noise, t),
            t,
            self.emb[pidx_t],
            self.tok_mask[pidx_t],
            self.spatial[idx_t],
        )


def _clip_grad_norm_per_concept(params: Sequence[torch.Tensor], max_norm: float) -> None:
    """`torch.nn.utils.clip_grad_norm_` applied to each concept's slice (dim 0) of the stacked parameters."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    total = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.ndim - 1))))


def train_concept_loras(
    pipe,
    items: Sequence[ConceptData],
    cfg: EraseConfig,
    device: str | torch.device,
    progress: bool = False,
) -> list[tuple[dict[str, torch.Tensor], list[float]]]:
    """Train one LoRA per concept on the pipeline's current weights, side by side; return each concept's
    (peft state dict, losses) in order.

    The LoRAs are independent (each sample goes through its own concept's LoRA, the loss is the sum of
    the concepts' losses, gradients are clipped per concept and AdamW is elementwise), and each concept
    draws its batches from its own seed as the reference does, so a LoRA is what training it alone gives
    up to float rounding. All concepts share one UNet call per step, which a GPU runs in about the time of
    one concept's. The UNet is left as it was (weights unchanged, no adapters).
    """
    for item in items:
        if len(item.images) != len(item.masks):
            raise ValueError(f"{len(item.images)} images but {len(item.masks)} masks")
        if not len(item.images) or not item.prompts:
            raise ValueError("need at least one image and one prompt")
    if not items:
        return []
    unet = pipe.unet
    _check_plain_unet(unet)
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    T = sched.config.num_train_timesteps
    p_t = importance_weights(T) if cfg.importance_sampling else None
    samplers = [_ConceptSampler(pipe, item, cfg, device, p_t) for item in items]
    batches = _ConceptBatches(samplers)
    inits = [_initial_lora(unet, cfg, item.seed) for item in items]
    keys = list(inits[0])
    modules = sorted({k.split(".lora_")[0] for k in keys})
    K = len(items)

    unet.requires_grad_(False)
    originals: dict[str, torch.nn.Module] = {}
    wrapped: dict[str, ConceptLoRALinear] = {}
    for m in modules:
        parent, _, child = m.rpartition(".")
        base = unet.get_submodule(m)
        A = torch.stack([init[f"{m}.lora_A.weight"] for init in inits]).to(device, unet.dtype)
        B = torch.stack([init[f"{m}.lora_B.weight"] for init in inits]).to(device, unet.dtype)
        originals[m] = base
        wrapped[m] = ConceptLoRALinear(base, A, B)
        setattr(unet.get_submodule(parent), child, wrapped[m])
    losses: list[list[float]] = [[] for _ in items]
    try:
        params = [p for w in wrapped.values() for p in (w.A, w.B)]
        opt = torch.optim.AdamW(
            params, lr=cfg.lora_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.lora_weight_decay
        )
        groups = torch.arange(K, device=device).repeat_interleave(cfg.train_batch_size)
        for w in wrapped.values():
            w.index = groups
        probe = AttentionProbe()
        with probing_cross_attention(unet, probe):
            desc = f"mace lora ({K} concept{'s' if K > 1 else ''} side by side)"
            for _ in progress_bar(range(cfg.lora_steps), desc=desc, enabled=progress):
                noisy, t, emb, tok, spatial = batches.draw(sched, T)
                probe.set_targets(tok, spatial)
                unet(noisy.to(unet.dtype), t, encoder_hidden_states=emb)  # only the probed attention matters
                per_concept = probe.group_losses(groups, K)
                per_concept.sum().backward()
                _clip_grad_norm_per_concept(params, cfg.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
                for k, v in enumerate(per_concept.detach().cpu().tolist()):
                    losses[k].append(v)
                probe.reset()
    finally:
        for m, base in originals.items():
            parent, _, child = m.rpartition(".")
            setattr(unet.get_submodule(parent), child, base)
    out = []
    for k in range(K):
        state = {}
        for m, w in wrapped.items():
            state[f"{m}.lora_A.weight"] = w.A[k].detach().to("cpu", torch.float32).clone()
            state[f"{m}.lora_B.weight"] = w.B[k].detach().to("cpu", torch.float32).clone()
        out.append(({key: state[key] for key in keys}, losses[k]))
    return out


@torch.no_grad()
def measure_attention(
    pipe,
    prompts: Sequence[str],
    phrases: Sequence[str],
    images: Sequence[Image.Image],
    masks: np.ndarray,
    device: str | torch.device,
    timesteps: Sequence[int] = (300,),
    seed: int = 0,
    use_pooler: bool = True,
) -> dict[str, float]:
    """Deterministic MACE loss and mean masked attention mass on fixed (image, prompt, t, noise).

    Image k is paired with prompt k mod P; every image is evaluated at every timestep. Used to
    check that a LoRA lowers the concept's attention with everything else held fixed.
    """
    unet, vae = pipe.unet, pipe.vae
    gen = torch.Generator("cpu").manual_seed(seed)
    pix = images_to_tensor(images, pipeline_resolution(pipe)).to(device, vae.dtype)
    latents = vae.encode(pix).latent_dist.mean.float() * vae.config.scaling_factor
    pidx = [k % len(prompts) for k in range(len(images))]
    emb = encode_prompts(pipe, [prompts[i] for i in pidx]).to(device, unet.dtype)
    tok_mask = concept_token_mask(pipe.tokenizer, [prompts[i] for i in pidx], phrases, use_pooler)
    spatial = masks_to_tensor(masks)
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    probe = AttentionProbe()
    loss, mass = 0.0, 0.0
    with probing_cross_attention(unet, probe):
        for tv in timesteps:
            noise = torch.randn(latents.shape, generator=gen).to(device)
            t = torch.full((len(images),), int(tv), dtype=torch.long, device=device)
            probe.set_targets(tok_mask, spatial)
            unet(sched.add_noise(latents, noise, t).to(unet.dtype), t, encoder_hidden_states=emb)
            loss += float(probe.loss())
            mass += float(probe.mean_mass())
    return {"loss": loss / len(timesteps), "mass": mass / len(timesteps)}
