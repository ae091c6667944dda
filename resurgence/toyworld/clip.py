"""The toy world's CLIP: a small open_clip model trained contrastively on rendered pairs.

It plays the role of OpenAI's ViT-L/14 in the toy study (CLIP accuracy, CLIP score,
CLIP-feature FID, CLIP distances between concept names), so it is a genuine open_clip
`CLIP` with OpenAI's BPE tokenizer and is saved in open_clip's ``local-dir:`` layout.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from resurgence.io import atomic_path, save_safetensors, write_json
from resurgence.toyworld.detector import (
    AugmentConfig,
    RenderFn,
    augment_batch,
    cosine_lr,
    default_render_fn,
    drop_train_state,
    resume_train_state,
    save_train_state,
)
from resurgence.toyworld.geometry import knowledge_gram
from resurgence.toyworld.knowledge import KnowledgeConfig

# Normalisation of the toy tower: renders are not ImageNet-like, so plain [-1, 1].
TOY_MEAN = (0.5, 0.5, 0.5)
TOY_STD = (0.5, 0.5, 0.5)

# Identity templates of the paper (App. C.1) and object prompt variants used as caption augmentation.
IDENTITY_TEMPLATES = (
    "A portrait of {}",
    "An image capturing {} at a public event",
    "A sketch of {}",
    "An oil painting of {}",
    "{} in an official photo",
    "a photo of {}",
    "{}",
)
OBJECT_TEMPLATES = ("a photo of the {}", "a photo of a {}", "an image of a {}", "a {}", "{}")


KNOWLEDGE_BALANCES = ("pairs", "domains")


@dataclass
class TextCalibrationConfig:
    """Locked-image text tuning (LiT, Zhai et al. 2022) after the contrastive training: the image tower is
    frozen, and the text tower alone is tuned on the same pairs (against the frozen image embeddings) with
    the knowledge Gram loss at a higher weight. Contrastive training leaves the names' cosines scattered
    around the knowledge targets (docs/geometry_calibration.md); this fits them closer without moving the
    image embeddings that the study's judgments read. ``steps = 0`` skips it. The defaults were chosen on the
    calibration statistic and CLIP's zero-shot accuracy alone (weight 100 against 300: the same object
    minimum, the smaller pull away from the contrastive fit; docs/geometry_calibration.md)."""

    steps: int = 600
    lr: float = 1e-3
    warmup: int = 30
    batch_size: int = 1_024
    knowledge_weight: float = 100.0
    knowledge_balance: str = "domains"

    def __post_init__(self) -> None:
        if self.knowledge_balance not in KNOWLEDGE_BALANCES:
            raise ValueError(
                f"text_calibration.knowledge_balance: allowed values: {list(KNOWLEDGE_BALANCES)}, "
                f"got {self.knowledge_balance!r}"
            )
        if self.steps < 0:
            raise ValueError(f"text_calibration.steps must be >= 0, got {self.steps}")


@dataclass
class ToyClipTrainConfig:
    """Architecture and training of the toy CLIP.

    Measured on one H100 at the defaults: 136 s (17 s rendering with 16 workers, 117 s training);
    held-out zero-shot top-1 99.9 % over the 45 objects, 97.8 % over the 140 identities.
    """

    seed: int = 0
    image_size: int = 64
    # architecture (about 3.3 M parameters, saved in fp16: about 6.6 MB)
    embed_dim: int = 64
    vision_width: int = 128
    vision_layers: int = 4
    vision_head_width: int = 32
    patch_size: int = 8
    text_width: int = 48
    text_heads: int = 4
    text_layers: int = 3
    context_length: int = 32
    # data
    n_train: int = 60_000  # rendered (image, caption) pairs: half kind="all" (named concepts), half "t2i"
    t2i_fraction: float = 0.5  # share of t2i-mixture pairs (variants, mapping phrases, free captions)
    n_val_objects: int = 2_000
    n_val_identities: int = 2_000
    n_variants: int = 4  # caption slots per image: the render's caption + prompt-template variants
    p_variant: float = 0.5  # chance that a slot holds a template variant instead of the render's caption
    # optimisation
    steps: int = 4_000
    batch_size: int = 1_024
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 200
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(
            p=0.5, max_shift=0.05, scale=(0.95, 1.05), brightness=0.1, contrast=0.1, saturation=0.1
        )
    )
    # Concept knowledge (`resurgence.toyworld.knowledge`): the cosine geometry of the concept names'
    # text embeddings is fitted to the knowledge vectors' (`knowledge_gram_loss`), as a real CLIP learns
    # names' relations from text the toy images do not hold. 0 trains on the contrastive loss alone.
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    knowledge_weight: float = 1.0
    # How the Gram loss averages its name pairs: "pairs" (every pair alike) or "domains" (per pair of
    # domains, then alike: objects weigh as much as identities; `knowledge_gram_loss`).
    knowledge_balance: str = "pairs"
    text_calibration: TextCalibrationConfig = field(default_factory=TextCalibrationConfig)
    render_workers: int = field(default_factory=lambda: min(16, os.cpu_count() or 1))
    checkpoint_every: int = 1_000
    bf16: bool = True
    save_dtype: str = "float16"  # keeps the 49408-token embedding table small on disk

    def __post_init__(self) -> None:
        if self.knowledge_balance not in KNOWLEDGE_BALANCES:
            raise ValueError(
                f"knowledge_balance: allowed values: {list(KNOWLEDGE_BALANCES)}, got {self.knowledge_balance!r}"
            )
        if isinstance(self.text_calibration, Mapping):
            self.text_calibration = TextCalibrationConfig(**self.text_calibration)


def model_config(cfg: ToyClipTrainConfig) -> dict[str, Any]:
    """open_clip ``model_cfg`` of the toy CLIP (standard CLIP class, custom sizes)."""
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {
            "image_size": cfg.image_size,
            "layers": cfg.vision_layers,
            "width": cfg.vision_width,
            "head_width": cfg.vision_head_width,
            "patch_size": cfg.patch_size,
        },
        "text_cfg": {
            "context_length": cfg.context_length,
            "vocab_size": 49408,
            "width": cfg.text_width,
            "heads": cfg.text_heads,
            "layers": cfg.text_layers,
        },
    }


def preprocess_config(cfg: ToyClipTrainConfig) -> dict[str, Any]:
    return {
        "size": cfg.image_size,
        "mean": list(TOY_MEAN),
        "std": list(TOY_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


def build_toy_clip(cfg: ToyClipTrainConfig) -> torch.nn.Module:
    """A randomly initialised open_clip `CLIP` of the toy architecture."""
    import open_clip

    model = open_clip.CLIP(**model_config(cfg))
    model.visual.preprocess_cfg = preprocess_config(cfg)
    return model


def save_toy_clip(model: torch.nn.Module, cfg: ToyClipTrainConfig, path: str | os.PathLike) -> None:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` (loadable by ``local-dir:``)."""
    path = Path(path)
    dtype = getattr(torch, cfg.save_dtype)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    save_safetensors(state, path / "open_clip_model.safetensors")
    write_json(
        path / "open_clip_config.json",
        {"model_cfg": model_config(cfg), "preprocess_cfg": preprocess_config(cfg)},
    )


def caption_variants(world: Any, concept: Any, rng: random.Random, n: int) -> list[str]:
    """``n`` prompt-template captions for a concept: the world's evaluation prompts, extra templates, bare names."""
    templates = IDENTITY_TEMPLATES if concept.domain == "identity" else OBJECT_TEMPLATES
    pool = list(world.eval_prompts(concept)) if hasattr(world, "eval_prompts") else []
    pool += [t.format(name) for t in templates for name in concept.names]
    return [rng.choice(pool) for _ in range(n)]


def concat_renders(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Concatenate `render_arrays` outputs."""
    return {
        "images": np.concatenate([p["images"] for p in parts]),
        "masks": np.concatenate([np.asarray(p["masks"], dtype=bool) for p in parts]),
        "labels": np.concatenate([np.asarray(p["labels"]) for p in parts]),
        "captions": [c for p in parts for c in p["captions"]],
        "domains": [str(d) for p in parts for d in p["domains"]],
    }


def build_caption_slots(
    world: Any, data: Mapping[str, Any], n_variants: int, p_variant: float, seed: int
) -> list[list[str]]:
    """Per image, ``n_variants`` captions: the render's caption or, for labelled items, template variants.

    Template variants teach the text tower the evaluation prompts and every synonym, so that
    zero-shot classification works with the prompts the paper uses.
    """
    rng = random.Random(seed)
    slots = []
    for cap, lab, dom in zip(data["captions"], data["labels"], data["domains"], strict=True):
        concepts = world.identities if dom == "identity" else world.objects if dom == "object" else None
        row = [cap]
        for _ in range(n_variants - 1):
            if concepts is not None and int(lab) >= 0 and rng.random() < p_variant:
                row += caption_variants(world, concepts[int(lab)], rng, 1)
            else:
                row.append(cap)
        slots.append(row)
    return slots


def tokenize_unique(captions: Sequence[str], context_length: int) -> tuple[torch.Tensor, np.ndarray]:
    """(tokens of the unique captions ``U x L``, index of each caption into them); BPE is slow, captions repeat."""
    import open_clip

    uniq, inverse = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
    tok = open_clip.tokenize(list(uniq), context_length=context_length)
    return tok, inverse


def multi_positive_clip_loss(
    img: torch.Tensor, txt: torch.Tensor, caption_ids: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with the same caption is a positive.

    Toy captions repeat within a batch ("a photo of the truck"); the plain CLIP loss would push
    identical texts apart.
    """
    logits = scale * img @ txt.T
    pos = (caption_ids[:, None] == caption_ids[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def domain_pair_weights(groups: torch.Tensor) -> torch.Tensor:
    """Weights over the off-diagonal pairs of rows labelled ``groups`` (a domain index per row) that
    average the pairs per pair of domains and those averages alike, summing to 1: a small domain's
    pairs weigh as much as a large one's (objects are 6 % of the world's name pairs)."""
    n = groups.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=groups.device)
    block = torch.minimum(groups[:, None], groups[None, :]) * (int(groups.max()) + 1) + torch.maximum(
        groups[:, None], groups[None, :]
    )
    _, index, counts = torch.unique(block[off], return_inverse=True, return_counts=True)
    weights = torch.zeros(n, n, device=groups.device)
    weights[off] = 1.0 / (counts[index].float() * len(counts))
    return weights


def knowledge_gram_loss(
    emb: torch.Tensor, gram: torch.Tensor, pair_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared difference between the off-diagonal cosines of unit embeddings ``emb`` and ``gram``.

    Contrastive training is blind to a component shared by every text and image (it shifts all
    logits alike), so this fixes the names' geometry without competing with it. ``pair_weights``
    (`domain_pair_weights`, computed once) replaces the plain mean by a weighted one.
    """
    n = emb.shape[0]
    if gram.shape != (n, n):
        raise ValueError(f"gram has shape {tuple(gram.shape)}, expected {(n, n)}")
    sq = (emb @ emb.T - gram) ** 2
    if pair_weights is None:
        return sq[~torch.eye(n, dtype=torch.bool, device=emb.device)].mean()
    if pair_weights.shape != (n, n):
        raise ValueError(f"pair_weights has shape {tuple(pair_weights.shape)}, expected {(n, n)}")
    return (sq * pair_weights).sum()


@torch.no_grad()
def zero_shot_accuracy(
    clip: Any, images: np.ndarray, labels: np.ndarray, concepts: Sequence[Any], prompts: Any
) -> float:
    """Top-1 over all ``concepts`` (prompt ensembles from ``prompts(concept)``), on uint8 NHWC images."""
    label_prompts = {c.name: list(prompts(c)) for c in concepts}
    names, lab = clip.label_embeddings(label_prompts)
    feats = []
    for i in range(0, len(images), 512):
        x = torch.as_tensor(images[i : i + 512]).permute(0, 3, 1, 2)
        feats.append(clip.encode_image_tensor(x).cpu())
    pred = (torch.cat(feats) @ lab.T).argmax(1).numpy()
    return float((pred == np.asarray(labels)).mean())


def _eval_prompts(world: Any):
    def prompts(concept: Any) -> list[str]:
        if hasattr(world, "eval_prompts"):
            return list(world.eval_prompts(concept))
        return [t.format(n) for t in OBJECT_TEMPLATES[:1] for n in concept.names]

    return prompts


def _training_pairs(
    cfg: ToyClipTrainConfig, world: Any, render_fn: RenderFn, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images uint8 NHWC, each image's caption slots into the unique captions, their tokens), on ``device``:
    a function of ``cfg.seed`` and the world, so a later calibration sees the pairs the training saw."""
    data = render_fn(
        world, cfg.n_train, seed=cfg.seed, size=cfg.image_size, kind="all", workers=cfg.render_workers
    )
    slots = build_caption_slots(world, data, cfg.n_variants, cfg.p_variant, cfg.seed)
    tokens, inverse = tokenize_unique([c for row in slots for c in row], cfg.context_length)
    x_all = torch.as_tensor(data["images"]).to(device)
    slot_ids = torch.as_tensor(inverse.reshape(len(slots), cfg.n_variants)).to(device)
    return x_all, slot_ids, tokens.to(device)


def _knowledge_targets(
    world: Any, knowledge: KnowledgeConfig, balance: str, context_length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(tokens of the concept names, their knowledge cosine matrix, pair weights of ``balance``)."""
    import open_clip

    know_names, gram = knowledge_gram(world, knowledge)
    pair_weights = None
    if balance == "domains":
        groups = torch.tensor([0] * len(world.identities) + [1] * len(world.objects), device=device)
        pair_weights = domain_pair_weights(groups)
    return (
        open_clip.tokenize(know_names, context_length=context_length).to(device),
        gram.to(device),
        pair_weights,
    )


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """NCHW in [0, 1] -> the toy tower's input."""
    mean = torch.tensor(TOY_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(TOY_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def calibrate_text_tower(
    model: torch.nn.Module,
    cfg: ToyClipTrainConfig,
    world: Any,
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    device: torch.device,
) -> dict[str, Any]:
    """`TextCalibrationConfig`'s locked-image text tuning of a trained toy CLIP, in place; returns its metrics.

    The image tower and the temperature are frozen; the image embeddings of the training pairs are
    computed once, unaugmented. The loss is the contrastive one against them plus the knowledge Gram loss.
    """
    tc = cfg.text_calibration
    x_all, slot_ids, tokens = pairs
    know_tokens, gram, pair_weights = _knowledge_targets(
        world, cfg.knowledge, tc.knowledge_balance, cfg.context_length, device
    )
    use_amp = cfg.bf16 and device.type == "cuda"
    t0 = time.time()
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        feats = torch.cat(
            [
                model.encode_image(
                    _normalise(x_all[i : i + 1024].permute(0, 3, 1, 2).float() / 255.0), normalize=True
                ).float()
                for i in range(0, len(x_all), 1024)
            ]
        )
        gram_before = float(
            knowledge_gram_loss(model.encode_text(know_tokens, normalize=True).float(), gram, pair_weights)
        )
    text = [
        p for name, p in model.named_parameters() if not name.startswith("visual") and name != "logit_scale"
    ]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in text:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(text, lr=tc.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    scale = model.logit_scale.detach().exp()
    n, bs = len(slot_ids), min(tc.batch_size, len(slot_ids))
    loss = know_loss = torch.tensor(float("nan"))
    model.train()
    try:
        for step in range(tc.steps):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, tc.steps, tc.warmup, tc.lr)
            idx = torch.randint(n, (bs,), device=device, generator=gen)
            v = torch.randint(cfg.n_variants, (bs,), device=device, generator=gen)
            cap = slot_ids[idx, v]
            uniq, inv = torch.unique(cap, return_inverse=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                txt = model.encode_text(tokens[uniq], normalize=True)[inv]
                names = model.encode_text(know_tokens, normalize=True)
            loss = multi_positive_clip_loss(feats[idx], txt.float(), cap, scale)
            know_loss = knowledge_gram_loss(names.float(), gram, pair_weights)
            opt.zero_grad(set_to_none=True)
            (loss + tc.knowledge_weight * know_loss).backward()
            torch.nn.utils.clip_grad_norm_(text, 1.0)
            opt.step()
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()
    return {
        "config": asdict(tc),
        "knowledge_loss_before": gram_before,
        "final_knowledge_loss": float(know_loss.detach()),  # the last step's (no device sync per step)
        "final_loss": float(loss.detach()),
        "seconds": time.time() - t0,
    }


def _save_evaluated(
    model: torch.nn.Module,
    cfg: ToyClipTrainConfig,
    world: Any,
    out_dir: Path,
    render_fn: RenderFn,
    device: torch.device,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Write ``out_dir/clip`` with ``metrics`` and the held-out zero-shot accuracies measured on the weights
    as saved, through the public wrapper; return the metrics."""
    with atomic_path(out_dir / "clip", is_dir=True) as tmp:
        save_toy_clip(model, cfg, tmp)
        from resurgence.models.clip import ClipModel, load_clip

        clip: ClipModel = load_clip({"kind": "toy", "path": str(tmp)}, device=device)
        prompts = _eval_prompts(world)
        for kind, concepts, n_val in (
            ("object", world.objects, cfg.n_val_objects),
            ("identity", world.identities, cfg.n_val_identities),
        ):
            if n_val <= 0 or not concepts:
                continue
            val = render_fn(
                world,
                n_val,
                seed=cfg.seed + 100_003,
                size=cfg.image_size,
                kind=kind,
                workers=cfg.render_workers,
            )
            keep = (np.asarray(val["labels"]) >= 0) & (np.asarray(val["domains"]) == kind)
            metrics[f"{kind}_zero_shot_top1"] = zero_shot_accuracy(
                clip, val["images"][keep], np.asarray(val["labels"])[keep], concepts, prompts
            )
            metrics[f"n_val_{kind}"] = int(keep.sum())
        metrics["size_bytes"] = (tmp / "open_clip_model.safetensors").stat().st_size
        metrics["config"] = asdict(cfg)
        write_json(tmp / "metrics.json", metrics)
    return metrics


def train_clip(
    cfg: ToyClipTrainConfig,
    world: Any,
    out_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    render_fn: RenderFn | None = None,
) -> dict[str, Any]:
    """Train the toy CLIP (then `calibrate_text_tower` where ``cfg.text_calibration.steps``); write
    ``out_dir/clip/`` (open_clip local-dir layout) and return metrics.

    All pairs are rendered once and kept on the device as uint8; each step samples a batch,
    one caption slot per image, and applies light augmentation. Resumes from
    ``out_dir/clip_ckpt/state.pt``.
    """
    render_fn = render_fn or default_render_fn()
    device = torch.device(device)
    out_dir = Path(out_dir)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    x_all, slot_ids, tokens = _training_pairs(cfg, world, render_fn, device)
    n = len(slot_ids)
    know = None
    if cfg.knowledge_weight > 0 and getattr(world, "identities", None):
        know = _knowledge_targets(world, cfg.knowledge, cfg.knowledge_balance, cfg.context_length, device)
    t_data = time.time() - t0

    model = build_toy_clip(cfg).to(device)
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in name]
    no_decay = [p for name, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in name)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    ckpt_path = out_dir / "clip_ckpt" / "state.pt"
    start = resume_train_state(ckpt_path, model, opt, gen, cfg)
    use_amp = cfg.bf16 and device.type == "cuda"
    model.train()
    loss_val, know_val = float("nan"), None
    bs = min(cfg.batch_size, n)
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr)
        idx = torch.randint(n, (bs,), device=device, generator=gen)
        v = torch.randint(cfg.n_variants, (bs,), device=device, generator=gen)
        cap_ids = slot_ids[idx, v]
        x = x_all[idx].permute(0, 3, 1, 2).float() / 255.0
        x, _ = augment_batch(x, gen, cfg.augment)
        x = _normalise(x)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            img = model.encode_image(x, normalize=True)
            txt = model.encode_text(tokens[cap_ids], normalize=True)
        loss = multi_positive_clip_loss(img.float(), txt.float(), cap_ids, model.logit_scale.exp())
        if know is not None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                names_emb = model.encode_text(know[0], normalize=True)
            know_loss = knowledge_gram_loss(names_emb.float(), know[1], know[2])
            loss = loss + cfg.knowledge_weight * know_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            loss_val = float(loss.detach())
            know_val = float(know_loss.detach()) if know is not None else None
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_train_state(
                ckpt_path,
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step + 1,
                    "gen": gen.get_state(),
                },
            )
    t_train = time.time() - t0 - t_data
    metrics: dict[str, Any] = dict(
        final_loss=loss_val,
        final_knowledge_loss=know_val,
        logit_scale=float(model.logit_scale.detach().exp()),
        n_train=n,
        n_unique_captions=len(tokens),
        seconds_data=t_data,
        seconds_train=t_train,
        resumed_from_step=start,
        seed=cfg.seed,
    )
    if cfg.text_calibration.steps > 0:
        metrics["text_calibration"] = calibrate_text_tower(
            model, cfg, world, (x_all, slot_ids, tokens), device
        )
    metrics["seconds"] = time.time() - t0
    _save_evaluated(model, cfg, world, out_dir, render_fn, device, metrics)
    drop_train_state(ckpt_path)
    return metrics


def calibrate_trained_clip(
    cfg: ToyClipTrainConfig,
    world: Any,
    out_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    render_fn: RenderFn | None = None,
) -> dict[str, Any]:
    """`calibrate_text_tower` applied to the CLIP already trained in ``out_dir/clip`` (the shipped one) with
    ``cfg`` (its training config plus the calibration): the pairs are rendered again from its seed, the
    folder is rewritten, and the metrics of its training are kept beside the calibration's."""
    from resurgence.models.clip import load_clip

    render_fn = render_fn or default_render_fn()
    device = torch.device(device)
    out_dir = Path(out_dir)
    trained = json.loads((out_dir / "clip" / "metrics.json").read_text())
    model = load_clip({"kind": "toy", "path": str(out_dir / "clip")}, device=device).model.float()
    pairs = _training_pairs(cfg, world, render_fn, device)
    metrics = {k: v for k, v in trained.items() if k != "config"}
    metrics["text_calibration"] = calibrate_text_tower(model, cfg, world, pairs, device)
    return _save_evaluated(model, cfg, world, out_dir, render_fn, device, metrics)
