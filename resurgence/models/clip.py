"""One CLIP interface for both worlds: the toy open_clip model and OpenAI's ViT-L/14.

Evaluators (CLIP accuracy, CLIP score, CLIP-feature FID) and the fine-tune data builder
(CLIP distances between concepts) only talk to `ClipModel`, so the toy and the real study
run the same code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from resurgence.phases import LOAD, in_phase

ImageBatch = Sequence[Image.Image] | np.ndarray


def to_pil_list(images: ImageBatch) -> list[Image.Image]:
    """PIL RGB images from a PIL list or a uint8 ``N x H x W x 3`` array."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 N x H x W x 3 images, got {images.dtype} {images.shape}")
        return [Image.fromarray(im) for im in images]
    return [im.convert("RGB") for im in images]


def to_uint8_array(images: ImageBatch) -> np.ndarray:
    """uint8 ``N x H x W x 3`` from a PIL list (all the same size) or such an array."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 N x H x W x 3 images, got {images.dtype} {images.shape}")
        return images
    arrs = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
    if len({a.shape for a in arrs}) > 1:
        raise ValueError("images of different sizes cannot be stacked")
    return np.stack(arrs) if arrs else np.zeros((0, 1, 1, 3), np.uint8)


class ClipModel:
    """A frozen open_clip model with its preprocessing and tokenizer; all outputs on CPU, float32."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Any,
        tokenizer: Any,
        device: str | torch.device = "cpu",
        name: str = "clip",
    ) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.name = name
        pcfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = getattr(model.visual, "image_size", pcfg.get("size", 224))
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(
            pcfg.get("mean", getattr(model.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
        )
        self.std = tuple(
            pcfg.get("std", getattr(model.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
        )

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def encode_image_tensor(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed an ``N x 3 x H x W`` batch (uint8, or float in [0, 1]) on the model's device.

        Used by the FID feature extractor and by batched GPU evaluation: square inputs are
        resized (bicubic, antialiased) to the tower's size; equivalent to ``preprocess`` for
        square images.
        """
        x = x.to(self.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True)
            x = x.clamp(0, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.dtype)
        return self.model.encode_image(x, normalize=normalize).float()

    @torch.no_grad()
    def encode_images(self, images: ImageBatch, batch_size: int = 64) -> torch.Tensor:
        """L2-normalised image embeddings ``N x D`` (CPU float32), through the model's own preprocessing."""
        pil = to_pil_list(images)
        out = []
        for i in range(0, len(pil), batch_size):
            x = torch.stack([self.preprocess(im) for im in pil[i : i + batch_size]]).to(
                self.device, self.dtype
            )
            out.append(self.model.encode_image(x, normalize=True).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings ``N x D`` (CPU float32)."""
        texts = list(texts)
        out = []
        for i in range(0, len(texts), batch_size):
            tok = self.tokenizer(texts[i : i + batch_size]).to(self.device)
            out.append(self.model.encode_text(tok, normalize=True).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    @property
    def logit_scale(self) -> float:
        """The temperature CLIP was trained with (exp of its learned log-scale; 100 if it has none)."""
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.exp()) if isinstance(scale, torch.Tensor) else 100.0

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
        return int(self.model.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1])

    def label_embeddings(self, label_prompts: Mapping[str, Sequence[str]]) -> tuple[list[str], torch.Tensor]:
        """One embedding per label: the re-normalised mean of its prompts' embeddings (CLIP's prompt ensembling)."""
        labels = list(label_prompts)
        if not labels or any(len(label_prompts[k]) == 0 for k in labels):
            raise ValueError("every label needs at least one prompt")
        flat = [p for k in labels for p in label_prompts[k]]
        emb = self.encode_texts(flat)
        out, i = [], 0
        for k in labels:
            n = len(label_prompts[k])
            out.append(F.normalize(emb[i : i + n].mean(0), dim=-1))
            i += n
        return labels, torch.stack(out)

    def zero_shot_scores(
        self, images: ImageBatch | torch.Tensor, label_prompts: Mapping[str, Sequence[str]]
    ) -> tuple[list[str], torch.Tensor]:
        """(labels, ``N x L`` cosine similarities) of images against prompt-ensembled labels."""
        labels, lab = self.label_embeddings(label_prompts)
        img = images if isinstance(images, torch.Tensor) else self.encode_images(images)
        return labels, img @ lab.T

    def zero_shot(self, images: ImageBatch, label_prompts: Mapping[str, Sequence[str]]) -> list[str]:
        """Top-1 label per image among ``label_prompts`` (prompt embeddings averaged per label)."""
        labels, scores = self.zero_shot_scores(images, label_prompts)
        return [labels[i] for i in scores.argmax(1).tolist()]

    def similarity(self, texts_a: Sequence[str], texts_b: Sequence[str]) -> torch.Tensor:
        """Cosine similarities ``A x B`` between two lists of texts (the paper's CLIP distance, Sec. 5.1)."""
        return self.encode_texts(texts_a) @ self.encode_texts(texts_b).T


def _missing_weights_error(model: str, pretrained: Any, cause: BaseException | None) -> RuntimeError:
    return RuntimeError(
        f"CLIP weights for open_clip model {model!r} (pretrained={pretrained!r}) are not available locally. "
        f"Obtain them on a machine with internet access, e.g. "
        f"`python -c \"import open_clip; open_clip.create_model('{model}', pretrained='openai', cache_dir='DIR')\"` "
        f"(ViT-L-14 'openai' is the CLIP of SD v1.4 and the paper's evaluations), then set the spec's "
        f"'cache_dir' to DIR, or set 'pretrained' to the downloaded .bin/.safetensors file."
        + (f" Cause: {type(cause).__name__}: {cause}" if cause else "")
    )


@in_phase(LOAD)
def load_clip(spec: Mapping[str, Any], device: str | torch.device = "cpu") -> ClipModel:
    """Build a `ClipModel` from a spec.

    ``{"kind": "toy", "path": dir}``: a folder with ``open_clip_config.json`` and
    ``open_clip_model.safetensors`` (written by `resurgence.toyworld.clip.train_clip`).
    ``{"kind": "open_clip", "model": "ViT-L-14", "pretrained": tag-or-file, "cache_dir": dir}``:
    a released model; nothing is downloaded unless ``"allow_download": true``.
    """
    import open_clip

    kind = spec.get("kind", "toy")
    if kind == "toy":
        path = Path(spec["path"])
        if not (path / "open_clip_config.json").is_file():
            raise FileNotFoundError(
                f"toy CLIP folder {path} has no open_clip_config.json (run train_clip first)"
            )
        name = f"local-dir:{path}"
        model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
        return ClipModel(model, preprocess, open_clip.get_tokenizer(name), device=device, name=str(path))
    if kind != "open_clip":
        raise ValueError(f"CLIP spec kind must be 'toy' or 'open_clip', got {kind!r}")

    model_name = spec["model"]
    pretrained = spec.get("pretrained")
    cache_dir = spec.get("cache_dir")
    if pretrained is None:
        raise _missing_weights_error(model_name, pretrained, None)
    is_file = os.path.sep in str(pretrained) or Path(str(pretrained)).suffix in {
        ".bin",
        ".pt",
        ".pth",
        ".safetensors",
    }
    if is_file and not Path(pretrained).is_file():
        raise _missing_weights_error(model_name, pretrained, FileNotFoundError(str(pretrained)))
    import huggingface_hub.constants as hf_constants

    old = hf_constants.HF_HUB_OFFLINE
    # huggingface_hub reads this flag per call: fail fast instead of retrying a download for a minute
    hf_constants.HF_HUB_OFFLINE = old or not spec.get("allow_download", False)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, cache_dir=cache_dir, device=device, require_pretrained=True
        )
    except Exception as e:  # open_clip raises RuntimeError/OSError/HF errors when weights are missing
        raise _missing_weights_error(model_name, pretrained, e) from e
    finally:
        hf_constants.HF_HUB_OFFLINE = old
    return ClipModel(model, preprocess, open_clip.get_tokenizer(model_name), device=device, name=model_name)
