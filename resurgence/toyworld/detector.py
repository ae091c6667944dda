"""Toy-world stand-ins for the Giphy Celebrity Detector and Grounded-SAM.

Both are small CNNs trained ONLY on ground-truth renders (never on diffusion samples), so
they measure what a generated image shows rather than what a generator was fitted to.
Heavy augmentation (blur, noise, colour jitter, shifts) makes them transfer to the blurrier,
noisier samples of the toy diffusion model.

The detector has an explicit "no known identity" class trained on generic people,
mapping-concept faces, objects and scenes: an erased identity that comes out as a generic
person must not be forced onto the nearest name (the real GCD also abstains on unknown faces).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from resurgence.io import atomic_path, save_safetensors, write_json
from resurgence.state import claim_state_dir, config_key

NONE_LABEL = "<none>"  # the detector's abstain class: no known identity in the image

RenderFn = Callable[..., dict[str, Any]]


# ---------------------------------------------------------------- shared training helpers


@dataclass
class AugmentConfig:
    """Photometric/geometric jitter that mimics diffusion-sample artefacts (no hue shifts: colours carry identity)."""

    p: float = 0.8  # probability that an image is augmented at all
    max_shift: float = 0.08  # fraction of the image size
    scale: tuple[float, float] = (0.9, 1.1)
    blur_sigma: tuple[float, float] = (0.0, 1.5)  # pixels at 64 px
    noise_std: tuple[float, float] = (0.0, 0.08)
    brightness: float = 0.1
    contrast: float = 0.15
    saturation: float = 0.15


def augment_batch(
    x: torch.Tensor,
    gen: torch.Generator,
    cfg: AugmentConfig,
    masks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment float images ``N x 3 x H x W`` in [0, 1] (and their ``N x 1 x H x W`` masks) on their device."""
    n, _, h, w = x.shape
    dev = x.device

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, device=dev, generator=gen)

    on = (torch.rand(n, device=dev, generator=gen) < cfg.p).float()
    # geometry: one affine grid (shift + isotropic scale) shared by image and mask
    s = 1.0 + (u(1.0 / cfg.scale[1], 1.0 / cfg.scale[0]) - 1.0) * on
    tx, ty = u(-1, 1) * 2 * cfg.max_shift * on, u(-1, 1) * 2 * cfg.max_shift * on
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = s, s, tx, ty
    grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if masks is not None:
        masks = F.grid_sample(masks.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    # colour: brightness, contrast, saturation
    gray = x.mean(1, keepdim=True)
    sat = (1 + u(-cfg.saturation, cfg.saturation) * on).view(n, 1, 1, 1)
    x = gray + (x - gray) * sat
    con = (1 + u(-cfg.contrast, cfg.contrast) * on).view(n, 1, 1, 1)
    x = x.mean((1, 2, 3), keepdim=True) + (x - x.mean((1, 2, 3), keepdim=True)) * con
    x = x * (1 + u(-cfg.brightness, cfg.brightness) * on).view(n, 1, 1, 1)
    # blur: per-image Gaussian sigma via a grouped separable convolution
    sigma = u(*cfg.blur_sigma) * on
    if float(sigma.max()) > 0.05:
        r = max(1, math.ceil(3 * float(sigma.max())))
        t = torch.arange(-r, r + 1, device=dev, dtype=x.dtype)
        k = torch.exp(-0.5 * (t[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (3n, 2r+1)
        y = x.reshape(1, 3 * n, h, w)
        y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k[:, None, None, :], groups=3 * n)
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k[:, None, :, None], groups=3 * n)
        x = y.reshape(n, 3, h, w)
    x = x + torch.randn(x.shape, device=dev, generator=gen) * (u(*cfg.noise_std) * on).view(n, 1, 1, 1)
    return x.clamp(0, 1), masks


def save_train_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Checkpoint for resume (model, optimiser, step, generator states), atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_train_state(path: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(path)
    return torch.load(p, map_location="cpu", weights_only=False) if p.is_file() else None


# Config fields a resumed run may change without changing what it computes.
RESUME_FREE = ("checkpoint_every", "render_workers")


def resume_train_state(
    path: str | os.PathLike, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator, cfg: Any
) -> int:
    """Restore model, optimiser and generator from a `save_train_state` checkpoint made under the same
    config ``cfg`` (any other is discarded, `resurgence.state.claim_state_dir`); the step to resume at
    (0 if none)."""
    claim_state_dir(
        Path(path).parent, config_key(cfg, RESUME_FREE), what=f"{type(cfg).__name__} training state"
    )
    state = load_train_state(path)
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    gen.set_state(state["gen"])
    return int(state["step"])


def drop_train_state(path: str | os.PathLike) -> None:
    """Remove a finished run's checkpoint folder (its state and key)."""
    shutil.rmtree(Path(path).parent, ignore_errors=True)


def default_render_fn() -> RenderFn:
    from resurgence.toyworld.data import render_arrays

    return render_arrays


def cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def model_bytes(state: Mapping[str, torch.Tensor]) -> int:
    return int(sum(t.numel() * t.element_size() for t in state.values()))


def _to_uint8_nhwc(images: Sequence[Image.Image] | np.ndarray) -> np.ndarray:
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 N x H x W x 3 images, got {images.dtype} {images.shape}")
        return images
    arrs = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
    if len({a.shape for a in arrs}) > 1:
        raise ValueError("images of different sizes cannot be stacked")
    return np.stack(arrs)


def _prep(images: np.ndarray | torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1] at ``size`` on ``device``."""
    x = torch.as_tensor(images).to(device).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


# ---------------------------------------------------------------- networks


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DetectorNet(nn.Module):
    """VGG-style CNN: four conv blocks with pooling, global average pool, linear head."""

    def __init__(self, num_classes: int, channels: Sequence[int] = (32, 64, 128, 160), dropout: float = 0.2):
        super().__init__()
        blocks, cin = [], 3
        for c in channels:
            blocks += [_conv_block(cin, c), nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from images normalised to [-1, 1]."""
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1))


class SegmenterNet(nn.Module):
    """A small U-Net: foreground-mask logits ``N x 1 x H x W`` from images in [-1, 1]."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 96)):
        super().__init__()
        self.down = nn.ModuleList()
        cin = 3
        for c in channels:
            self.down.append(_conv_block(cin, c))
            cin = c
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for c_skip in reversed(channels[:-1]):
            self.up.append(nn.ConvTranspose2d(cin, c_skip, 2, stride=2))
            self.fuse.append(_conv_block(2 * c_skip, c_skip))
            cin = c_skip
        self.out = nn.Conv2d(cin, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1]), strict=True):
            x = fuse(torch.cat([up(x), skip], 1))
        return self.out(x)


# ---------------------------------------------------------------- identity detector


@dataclass
class DetectorTrainConfig:
    """Training of the toy celebrity detector.

    Measured on one H100 at the defaults: 52 s in all; held-out top-1 99.4 % over 140 identities,
    99.8 % recall of the none class.
    """

    seed: int = 0
    image_size: int = 64
    n_identity: int = 40_000  # renders of named identities (kind="identity")
    n_other: int = (
        20_000  # the t2i mixture: generic people, mapping-concept faces, objects, scenes, identities
    )
    p_none: float = 0.3  # share of "no known identity" items per batch
    n_val: int = 4_000
    channels: tuple[int, ...] = (32, 64, 128, 160)
    steps: int = 4_000
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup: int = 200
    label_smoothing: float = 0.05
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    render_workers: int = field(default_factory=lambda: min(16, os.cpu_count() or 1))
    checkpoint_every: int = 1_000
    bf16: bool = True


class IdentityDetector:
    """Classifies an image into one world identity or `NONE_LABEL`."""

    def __init__(
        self,
        net: DetectorNet,
        class_names: Sequence[str],
        image_size: int,
        device: str | torch.device = "cpu",
    ):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.class_names = list(class_names)
        self.image_size = image_size

    @property
    def identity_names(self) -> list[str]:
        return [c for c in self.class_names if c != NONE_LABEL]

    def config(self, channels: Sequence[int]) -> dict[str, Any]:
        return {"class_names": self.class_names, "image_size": self.image_size, "channels": list(channels)}

    def save(self, path: str | os.PathLike) -> None:
        """``path/detector.safetensors`` + ``path/detector.json``."""
        channels = [b[0].out_channels for b in self.net.features if isinstance(b, nn.Sequential)]
        path = Path(path)
        save_safetensors(self.net.state_dict(), path / "detector.safetensors")
        write_json(path / "detector.json", self.config(channels))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> IdentityDetector:
        from safetensors.torch import load_file

        path = Path(path)
        cfg = json.loads((path / "detector.json").read_text())
        net = DetectorNet(len(cfg["class_names"]), cfg["channels"])
        net.load_state_dict(load_file(str(path / "detector.safetensors")))
        return cls(net, cfg["class_names"], cfg["image_size"], device)

    @torch.no_grad()
    def predict_proba(
        self, images: Sequence[Image.Image] | np.ndarray | torch.Tensor, batch_size: int = 256
    ) -> np.ndarray:
        """Class probabilities ``N x C`` (float32), columns in `class_names` order."""
        arr = images if isinstance(images, torch.Tensor) else _to_uint8_nhwc(images)
        out = []
        for i in range(0, len(arr), batch_size):
            x = _prep(arr[i : i + batch_size], self.image_size, self.device) * 2 - 1
            out.append(self.net(x).float().softmax(-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.class_names)), np.float32)

    def predict(self, images: Sequence[Image.Image] | np.ndarray) -> tuple[list[str], np.ndarray]:
        """(top-1 class names, ``N x C`` probabilities)."""
        probs = self.predict_proba(images)
        return [self.class_names[i] for i in probs.argmax(1)], probs


def detector_targets(data: Mapping[str, Any], n_identities: int) -> np.ndarray:
    """Class index per render: its identity index for named-identity items, else the none class."""
    labels = np.asarray(data["labels"])
    domains = np.asarray(data["domains"])
    return np.where((domains == "identity") & (labels >= 0), labels, n_identities).astype(np.int64)


def _render(
    render_fn: RenderFn, world: Any, n: int, seed: int, size: int, kind: str, workers: int
) -> dict[str, Any]:
    return render_fn(world, n, seed=seed, size=size, kind=kind, workers=workers)


def _detector_data(
    cfg: DetectorTrainConfig, world: Any, render_fn: RenderFn, n_id: int, n_other: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    a = _render(render_fn, world, n_id, seed, cfg.image_size, "identity", cfg.render_workers)
    b = _render(render_fn, world, n_other, seed + 1, cfg.image_size, "t2i", cfg.render_workers)
    k = len(world.identities)
    images = np.concatenate([a["images"], b["images"]])
    targets = np.concatenate([detector_targets(a, k), detector_targets(b, k)])
    return images, targets


def train_detector(
    cfg: DetectorTrainConfig,
    world: Any,
    out_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    render_fn: RenderFn | None = None,
) -> dict[str, Any]:
    """Train the toy identity detector on renders; write ``out_dir/detector/`` and return metrics.

    Resumes from ``out_dir/detector_ckpt/state.pt`` when present.
    """
    render_fn = render_fn or default_render_fn()
    device = torch.device(device)
    out_dir = Path(out_dir)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    k = len(world.identities)
    class_names = [c.name for c in world.identities] + [NONE_LABEL]
    images, targets = _detector_data(cfg, world, render_fn, cfg.n_identity, cfg.n_other, cfg.seed)
    val_images, val_targets = _detector_data(
        cfg, world, render_fn, cfg.n_val * 3 // 4, cfg.n_val - cfg.n_val * 3 // 4, cfg.seed + 100_003
    )
    # balanced sampling: identities uniformly, the none class with probability p_none
    counts = np.maximum(np.bincount(targets, minlength=k + 1).astype(np.float64), 1.0)
    class_p = np.full(k + 1, (1.0 - cfg.p_none) / k)
    class_p[k] = cfg.p_none
    weights = torch.tensor(class_p[targets] / counts[targets], device=device)
    x_all = torch.as_tensor(images).to(device)  # uint8 NHWC stays compact on the device
    y_all = torch.as_tensor(targets).to(device)

    net = DetectorNet(k + 1, cfg.channels).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    ckpt_path = out_dir / "detector_ckpt" / "state.pt"
    start = resume_train_state(ckpt_path, net, opt, gen, cfg)
    use_amp = cfg.bf16 and device.type == "cuda"
    net.train()
    loss_val = float("nan")
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr)
        idx = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=gen)
        x = x_all[idx].permute(0, 3, 1, 2).float() / 255.0
        x, _ = augment_batch(x, gen, cfg.augment)
        x = (x * 2 - 1).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y_all[idx], label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            loss_val = float(loss.detach())
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_train_state(
                ckpt_path,
                {
                    "model": net.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step + 1,
                    "gen": gen.get_state(),
                },
            )

    det = IdentityDetector(net, class_names, cfg.image_size, device)
    pred = det.predict_proba(val_images).argmax(1)
    is_id = val_targets < k
    metrics = {
        "identity_top1": float((pred[is_id] == val_targets[is_id]).mean()) if is_id.any() else float("nan"),
        "none_recall": float((pred[~is_id] == k).mean()) if (~is_id).any() else float("nan"),
        "overall_top1": float((pred == val_targets).mean()),
        "n_classes": k + 1,
        "n_train": len(targets),
        "n_val": len(val_targets),
        "final_loss": loss_val,
        "size_bytes": model_bytes(net.state_dict()),
        "seconds": time.time() - t0,
        "resumed_from_step": start,
        "seed": cfg.seed,
        "config": asdict(cfg),
    }
    with atomic_path(out_dir / "detector", is_dir=True) as tmp:
        det.save(tmp)
        write_json(tmp / "metrics.json", metrics)
    drop_train_state(ckpt_path)
    return metrics


# ---------------------------------------------------------------- toy segmenter


@dataclass
class SegmenterTrainConfig:
    """Training of the toy Grounded-SAM analogue (measured on one H100: 43 s, held-out mean IoU 0.986)."""

    seed: int = 0
    image_size: int = 64
    n_train: int = 40_000
    n_val: int = 2_000
    channels: tuple[int, ...] = (16, 32, 64, 96)
    steps: int = 3_000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    render_workers: int = field(default_factory=lambda: min(16, os.cpu_count() or 1))
    checkpoint_every: int = 1_000
    bf16: bool = True


class ToySegmenterModel:
    """Predicts the concept's foreground mask; the phrase is implicit (renders show one concept)."""

    def __init__(
        self, net: SegmenterNet, image_size: int, channels: Sequence[int], device: str | torch.device = "cpu"
    ):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.image_size = image_size
        self.channels = list(channels)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        save_safetensors(self.net.state_dict(), path / "segmenter.safetensors")
        write_json(path / "segmenter.json", {"image_size": self.image_size, "channels": self.channels})

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> ToySegmenterModel:
        from safetensors.torch import load_file

        path = Path(path)
        cfg = json.loads((path / "segmenter.json").read_text())
        net = SegmenterNet(cfg["channels"])
        net.load_state_dict(load_file(str(path / "segmenter.safetensors")))
        return cls(net, cfg["image_size"], cfg["channels"], device)

    @torch.no_grad()
    def predict(
        self, images: Sequence[Image.Image] | np.ndarray, threshold: float = 0.5, batch_size: int = 128
    ) -> np.ndarray:
        """bool masks ``N x H x W`` at the input resolution."""
        arr = _to_uint8_nhwc(images)
        out = []
        for i in range(0, len(arr), batch_size):
            x = _prep(arr[i : i + batch_size], self.image_size, self.device) * 2 - 1
            p = self.net(x).float().sigmoid()
            if p.shape[-2:] != arr.shape[1:3]:
                p = F.interpolate(p, size=arr.shape[1:3], mode="bilinear", align_corners=False)
            out.append((p[:, 0] > threshold).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0,) + arr.shape[1:3], bool)


def mask_iou(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-image IoU of bool masks; 1 where both are empty."""
    inter = (pred & true).sum((1, 2))
    union = (pred | true).sum((1, 2))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def train_segmenter(
    cfg: SegmenterTrainConfig,
    world: Any,
    out_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    render_fn: RenderFn | None = None,
) -> dict[str, Any]:
    """Train the toy segmenter on rendered masks; write ``out_dir/segmenter/`` and return metrics."""
    render_fn = render_fn or default_render_fn()
    device = torch.device(device)
    out_dir = Path(out_dir)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    data = _render(render_fn, world, cfg.n_train, cfg.seed, cfg.image_size, "all", cfg.render_workers)
    val = _render(render_fn, world, cfg.n_val, cfg.seed + 100_003, cfg.image_size, "all", cfg.render_workers)
    x_all = torch.as_tensor(data["images"]).to(device)
    m_all = torch.as_tensor(np.asarray(data["masks"], dtype=bool)).to(device)

    net = SegmenterNet(cfg.channels).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    ckpt_path = out_dir / "segmenter_ckpt" / "state.pt"
    start = resume_train_state(ckpt_path, net, opt, gen, cfg)
    use_amp = cfg.bf16 and device.type == "cuda"
    net.train()
    loss_val = float("nan")
    for step in range(start, cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr)
        idx = torch.randint(len(x_all), (cfg.batch_size,), device=device, generator=gen)
        x = x_all[idx].permute(0, 3, 1, 2).float() / 255.0
        x, m = augment_batch(x, gen, cfg.augment, masks=m_all[idx][:, None])
        x = (x * 2 - 1).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = net(x)
        logits = logits.float()
        p = logits.sigmoid()
        dice = 1 - (2 * (p * m).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + m.sum((1, 2, 3)) + 1)
        loss = F.binary_cross_entropy_with_logits(logits, m) + dice.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            loss_val = float(loss.detach())
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_train_state(
                ckpt_path,
                {
                    "model": net.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step + 1,
                    "gen": gen.get_state(),
                },
            )

    seg = ToySegmenterModel(net, cfg.image_size, cfg.channels, device)
    true = np.asarray(val["masks"], dtype=bool)
    iou = mask_iou(seg.predict(val["images"]), true)
    nonempty = true.any((1, 2))
    metrics = {
        "mean_iou": float(iou.mean()),
        "mean_iou_nonempty": float(iou[nonempty].mean()) if nonempty.any() else float("nan"),
        "n_train": cfg.n_train,
        "n_val": cfg.n_val,
        "final_loss": loss_val,
        "size_bytes": model_bytes(net.state_dict()),
        "seconds": time.time() - t0,
        "resumed_from_step": start,
        "seed": cfg.seed,
        "config": asdict(cfg),
    }
    with atomic_path(out_dir / "segmenter", is_dir=True) as tmp:
        seg.save(tmp)
        write_json(tmp / "metrics.json", metrics)
    drop_train_state(ckpt_path)
    return metrics


class ToySegmenter:
    """The toy world's segmenter (`resurgence.models.segment.Segmenter`): a small U-Net trained on rendered masks.

    The phrase is not used: every toy render shows one concept on a background, so "the
    concept's foreground" is well defined without grounding.
    """

    def __init__(self, model: ToySegmenterModel, threshold: float = 0.5) -> None:
        self.model = model
        self.threshold = threshold

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", threshold: float = 0.5
    ) -> ToySegmenter:
        """From a folder written by `resurgence.toyworld.detector.train_segmenter`."""
        return cls(ToySegmenterModel.load(path, device), threshold)

    def segment(self, images: list[Image.Image], phrase: str) -> np.ndarray:
        return self.model.predict(images, threshold=self.threshold)
