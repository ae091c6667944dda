"""ESD, Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023, arXiv 2303.07345): fine-tune
a copy of the UNet so that, on the concept's prompt, it predicts the frozen model's noise guided *away*
from the concept.

Each iteration (the authors' maintained script, github.com/rohitgandikota/erasing, `esd_sd.py`):
draw a concept phrase and a step k of an ``num_inference_steps`` schedule; sample x_k by running the
frozen model from noise on the phrase (classifier-free guidance ``guidance_scale``) for k steps; then

    target = e_p - eta (e_p - e_0),   loss = ||e_theta(x_k, t_k, c) - target||^2

with e_p, e_0 the frozen model's noise predictions for the phrase and for the empty prompt, and
eta = ``negative_guidance``; the target is linear in the UNet's outputs, so it holds as written for a
model that predicts v (SD v2.1 at 768 px). x_k, e_p and e_0 come from the frozen model alone, so they
are computed before the training, ``sample_batch`` iterations' at once (`frozen_samples`): the same
quantities as the script's, one batched pipeline run per group instead of one run per iteration (on a
GPU the runs at batch 1 were most of an ESD job's time). Several concepts share one run, a phrase drawn per iteration (as the
original `train-esd.py` does with its comma-separated concepts). The published variants train
different parameters: ESD-x every Linear/Conv2d parameter of the cross-attention blocks (`attn2`),
ESD-u every one outside them. The change is dense, so it is saved as dense parameter deltas
(`artifact.DENSE_FILE`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from resurgence.erasure.artifact import ConceptSpec, Erasure, peak_memory
from resurgence.erasure.config import TRAIN_METHODS, ESDConfig
from resurgence.io import atomic_path
from resurgence.mace.refine import encode_prompts
from resurgence.phases import SAMPLE, in_phase
from resurgence.progress import progress_bar
from resurgence.state import claim_state_dir, config_key

logger = logging.getLogger(__name__)

STATE_FILE = "esd_state.pt"
# Fields a resumed run may change without changing what it computes.
RESUME_FREE = ("checkpoint_every", "log_every")


def esd_parameters(unet: torch.nn.Module, train_method: str) -> dict[str, torch.nn.Parameter]:
    """The parameters a variant trains: those of every Linear/Conv2d inside (esd-x) or outside (esd-u)
    the cross-attention blocks (`attn2`), by parameter name."""
    if train_method not in TRAIN_METHODS:
        raise ValueError(f"train_method must be one of {list(TRAIN_METHODS)}, got {train_method!r}")
    out: dict[str, torch.nn.Parameter] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            continue
        if ("attn2" in name) == (train_method == "esd-x"):
            for pname, p in module.named_parameters(recurse=False):
                out[f"{name}.{pname}"] = p
    return out


def esd_target(e_concept: torch.Tensor, e_null: torch.Tensor, negative_guidance: float) -> torch.Tensor:
    """The negatively guided noise the edited model must predict on the concept's prompt."""
    return e_concept - negative_guidance * (e_concept - e_null)


def esd_loss(
    pred: torch.Tensor, e_concept: torch.Tensor, e_null: torch.Tensor, negative_guidance: float
) -> torch.Tensor:
    return F.mse_loss(pred.float(), esd_target(e_concept, e_null, negative_guidance).float())


@torch.no_grad()
def frozen_noise(
    base, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, null: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen UNet's noise predictions (e_p, e_0) at (x_k, t_k) for the concept's prompt and the empty one."""
    e_p = base(x, t, encoder_hidden_states=cond, return_dict=False)[0]
    e_0 = base(x, t, encoder_hidden_states=null.expand(len(x), -1, -1), return_dict=False)[0]
    return e_p, e_0


@torch.no_grad()
def partial_samples(
    pipe, cond: torch.Tensor, null: torch.Tensor, ks: Sequence[int], cfg: ESDConfig, seeds: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_k, t_k) per row of ``cond``: the frozen pipeline's latents after its own k of
    ``num_inference_steps`` guided steps from the noise of its seed, and the timestep it would denoise next.

    One run of diffusers' pipeline for the batch, stopped after the largest k; each row's latents are taken
    after its own k-th step (the script runs the pipeline once per row and stops it there)."""
    unet = pipe.unet
    size = unet.config.sample_size
    shape = (1, unet.config.in_channels, size, size)
    noise = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    noise = noise.to(pipe.device, unet.dtype)
    pipe.scheduler.set_timesteps(cfg.num_inference_steps, device=pipe.device)
    t_k = pipe.scheduler.timesteps[list(ks)]
    x_k = noise * pipe.scheduler.init_noise_sigma
    last = max(ks)
    if last == 0:
        return x_k, t_k
    wanted = torch.tensor(list(ks), device=pipe.device)

    def keep_after_step(p, i, t, kwargs):
        done = wanted == i + 1
        x_k[done] = kwargs["latents"][done].to(x_k.dtype)
        if i + 1 == last:
            p._interrupt = True
        return kwargs

    pipe(
        prompt_embeds=cond,
        negative_prompt_embeds=null.expand(len(cond), -1, -1),
        num_inference_steps=cfg.num_inference_steps,
        guidance_scale=cfg.guidance_scale,
        latents=noise,
        output_type="latent",
        callback_on_step_end=keep_after_step,
    )
    return x_k, t_k


def draw_iterations(cfg: ESDConfig, n_phrases: int) -> list[tuple[int, int, int]]:
    """Per iteration, in order: (phrase index, step k, noise seed), drawn as the script draws them."""
    rng = np.random.default_rng(cfg.seed)
    draws = []
    for _ in range(cfg.iterations):
        j = int(rng.integers(n_phrases))
        k = int(rng.integers(cfg.num_inference_steps))
        draws.append((j, k, int(rng.integers(2**31))))
    return draws


def sample_groups(draws: Sequence[tuple[int, int, int]], batch: int) -> list[list[int]]:
    """Iterations grouped ``batch`` at a time in the order of their k, so that a group's pipeline run stops
    near each member's own k (on a CPU the grouping then costs about as many UNet calls as one run per
    iteration). A function of the draws alone: a resumed run recomputes the same groups."""
    order = sorted(range(len(draws)), key=lambda i: (draws[i][1], i))
    return [order[i : i + batch] for i in range(0, len(order), batch)]


@torch.no_grad()
@in_phase(SAMPLE)
def frozen_samples(
    pipe,
    states: torch.Tensor,
    null: torch.Tensor,
    draws,
    cfg: ESDConfig,
    start: int = 0,
    progress: bool = True,
) -> dict[int, tuple[torch.Tensor, ...]]:
    """Iteration -> (x_k, t_k, e_p, e_0) for every iteration from ``start`` on: what the frozen model gives
    the training, computed before it in `sample_groups`' groups."""
    out: dict[int, tuple[torch.Tensor, ...]] = {}
    groups = [g for g in sample_groups(draws, cfg.sample_batch) if max(g) >= start]
    for group in progress_bar(groups, desc="esd samples", enabled=progress):
        cond = states[[draws[i][0] for i in group]]
        x, t = partial_samples(
            pipe, cond, null, [draws[i][1] for i in group], cfg, [draws[i][2] for i in group]
        )
        e_p, e_0 = frozen_noise(pipe.unet, x, t, cond, null)
        for n, i in enumerate(group):
            out[i] = (x[n : n + 1], t[n : n + 1], e_p[n : n + 1], e_0[n : n + 1])
    return out


def erase_concepts(
    pipe,
    concepts: Sequence[ConceptSpec],
    cfg: ESDConfig,
    device: str | torch.device,
    state_dir: str | Path | None = None,
    model_key: str | None = None,
    progress: bool = True,
) -> Erasure:
    """ESD on ``pipe`` (left unchanged): the trained copy's change of every trained parameter, dense.

    With ``state_dir`` the training state is kept there every ``cfg.checkpoint_every`` iterations and
    a rerun under the same settings, concepts and model (``model_key``) resumes from it.
    """
    if not concepts:
        raise ValueError("no concepts to erase")
    device = torch.device(device)
    t0 = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    base = pipe.unet
    base.requires_grad_(False)
    trained = copy.deepcopy(base)
    params = esd_parameters(trained, cfg.train_method)
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(list(params.values()), lr=cfg.lr)
    phrases = [(c.name, p) for c in concepts for p in c.phrases]
    states = encode_prompts(pipe, [p for _, p in phrases])
    null = encode_prompts(pipe, [""])
    start, losses = 0, []
    state_path = None
    if state_dir is not None:
        key = {"config": config_key(cfg, RESUME_FREE), "phrases": phrases, "model": model_key}
        claim_state_dir(state_dir, key, what="ESD training state")
        state_path = Path(state_dir) / STATE_FILE
        if state_path.is_file():
            st = torch.load(state_path, map_location="cpu", weights_only=False)
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(st["params"][n].to(p.device, p.dtype))
            optimizer.load_state_dict(st["optimizer"])
            start, losses = int(st["iteration"]), list(st["losses"])
            logger.info("resuming ESD from iteration %d of %d (%s)", start, cfg.iterations, state_path)
    draws = draw_iterations(cfg, len(phrases))
    t_sample = time.perf_counter()
    samples = frozen_samples(pipe, states, null, draws, cfg, start, progress)
    t_sample = time.perf_counter() - t_sample
    bar = progress_bar(
        range(start, cfg.iterations), desc="esd", enabled=progress, initial=start, total=cfg.iterations
    )
    for it in bar:
        x, t, e_p, e_0 = samples.pop(it)
        cond = states[draws[it][0] : draws[it][0] + 1]
        pred = trained(x, t, encoder_hidden_states=cond, return_dict=False)[0]
        loss = esd_loss(pred, e_p, e_0, cfg.negative_guidance)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if (it + 1) % cfg.log_every == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-cfg.log_every :]):.4f}")
        if state_path is not None and (it + 1) % cfg.checkpoint_every == 0 and it + 1 < cfg.iterations:
            with atomic_path(state_path) as tmp:
                torch.save(
                    {
                        "params": {n: p.detach().cpu() for n, p in params.items()},
                        "optimizer": optimizer.state_dict(),
                        "iteration": it + 1,
                        "losses": losses,
                    },
                    tmp,
                )
    base_params = dict(base.named_parameters())
    dense = {n: (p.detach().float() - base_params[n].detach().float()).cpu() for n, p in params.items()}
    report: dict[str, Any] = {
        "method": "esd",
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "concepts": [c.name for c in concepts],
        "phrases": [p for _, p in phrases],
        "trained_parameters": len(params),
        "trained_numel": int(sum(p.numel() for p in params.values())),
        "losses": losses,
        "resumed_from": start or None,
        "delta_rel_norm_total": float(
            torch.sqrt(sum((d.double() ** 2).sum() for d in dense.values()))
            / torch.sqrt(sum((base_params[n].detach().double() ** 2).sum() for n in dense)).clamp_min(1e-30)
        ),
        "sampling_s": t_sample,
        "wall_time_s": time.perf_counter() - t0,
        "peak_memory": peak_memory(device),
    }
    del trained
    return Erasure(deltas={}, report=report, dense=dense)
