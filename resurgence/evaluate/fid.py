"""FID through torch-fidelity, with CLIP features (toy world) or Inception-v3 (real models).

The toy world's images are 64-px renders that Inception (ImageNet, 299 px) describes poorly,
so the toy FID uses the world's own CLIP image tower as the feature space (a "CLIP-FID").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torch_fidelity import FeatureExtractorBase, calculate_metrics, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from resurgence.models.clip import ClipModel, to_uint8_array

CLIP_EXTRACTOR = "resurgence-clip"
INCEPTION_EXTRACTOR = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_CACHE = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


class ImageListDataset(Dataset):
    """uint8 ``3 x H x W`` tensors, the input format torch-fidelity expects."""

    def __init__(self, images: Sequence[Image.Image] | np.ndarray) -> None:
        self.images = to_uint8_array(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)


class ClipFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity extractor over a `ClipModel`'s image tower: the unnormalised image embedding.

    torch-fidelity instantiates extractors itself; the model arrives through the
    ``clip_model`` keyword of `calculate_metrics`.
    """

    def __init__(
        self, name: str, features_list: Sequence[str], clip_model: ClipModel | None = None, **kwargs: Any
    ) -> None:
        super().__init__(name, features_list)
        if clip_model is None:
            raise ValueError(f"{CLIP_EXTRACTOR} needs calculate_metrics(..., clip_model=ClipModel)")
        self.clip = clip_model  # not an nn.Module: torch-fidelity's .cuda() must not move it

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("clip",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "clip"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> None:
        return None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.clip.encode_image_tensor(x, normalize=False).double().cpu(),)


if CLIP_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(CLIP_EXTRACTOR, ClipFeatureExtractor)


def clip_features(
    clip: ClipModel, images: Sequence[Image.Image] | np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """The exact features `frechet_distance` uses for ``features="clip"`` (float64 ``N x D``)."""
    ds = ImageListDataset(images)
    out = [
        clip.encode_image_tensor(
            torch.stack([ds[j] for j in range(i, min(i + batch_size, len(ds)))]), normalize=False
        )
        for i in range(0, len(ds), batch_size)
    ]
    return torch.cat(out).double().cpu().numpy()


def frechet_distance(
    images_a: Sequence[Image.Image] | np.ndarray,
    images_b: Sequence[Image.Image] | np.ndarray,
    features: Literal["clip", "inception"] = "clip",
    clip: ClipModel | None = None,
    batch_size: int = 64,
    inception_weights_path: str | os.PathLike | None = None,
    cuda: bool | None = None,
    allow_download: bool = False,
) -> float:
    """FID between two image sets, computed by torch-fidelity.

    ``features="clip"`` needs ``clip`` (the world's `ClipModel`); ``"inception"`` uses
    torch-fidelity's ``inception-v3-compat`` (weights from ``inception_weights_path`` or its
    download cache; downloaded only with ``allow_download``).
    """
    if len(images_a) < 2 or len(images_b) < 2:
        raise ValueError("FID needs at least two images per set")
    kwargs: dict[str, Any] = dict(
        input1=ImageListDataset(images_a),
        input2=ImageListDataset(images_b),
        fid=True,
        batch_size=batch_size,
        cache=False,
        save_cpu_ram=True,  # no DataLoader worker processes for in-memory images
        verbose=False,
    )
    if features == "clip":
        if clip is None:
            raise ValueError("features='clip' needs a ClipModel (clip=...)")
        kwargs.update(feature_extractor=CLIP_EXTRACTOR, clip_model=clip, cuda=False)
        return float(calculate_metrics(**kwargs)["frechet_inception_distance"])
    if features != "inception":
        raise ValueError(f"features must be 'clip' or 'inception', got {features!r}")
    if inception_weights_path is None and not allow_download and not INCEPTION_CACHE.is_file():
        raise RuntimeError(_inception_help(FileNotFoundError(str(INCEPTION_CACHE))))
    kwargs.update(
        feature_extractor=INCEPTION_EXTRACTOR,
        feature_extractor_weights_path=str(inception_weights_path) if inception_weights_path else None,
        cuda=torch.cuda.is_available() if cuda is None else cuda,
    )
    try:
        return float(calculate_metrics(**kwargs)["frechet_inception_distance"])
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
        if inception_weights_path is None or not os.path.isfile(inception_weights_path):
            raise RuntimeError(_inception_help(e)) from e
        raise


class FrechetDistance:
    """FID of a state's caption images against the base model's (``reference``), as an `Evaluator`: one row
    for the whole set (role, concept and prompt of a set, the first record's seed)."""

    name = "fid"

    def __init__(self, reference: Sequence[Image.Image], **kwargs: Any) -> None:
        self.reference = reference
        self.kwargs = kwargs  # `frechet_distance` options (`registry.fid_kwargs`)

    def evaluate(self, images: list[Image.Image], records: list[dict]) -> list[dict]:
        if len(images) != len(records):
            raise ValueError(f"{len(images)} images but {len(records)} records")
        value = frechet_distance(images, self.reference, **self.kwargs)
        return [
            dict(
                role="caption", concept="", prompt="", seed=records[0]["seed"], metric=self.name, value=value
            )
        ]


def _inception_help(cause: BaseException) -> str:
    return (
        f"torch-fidelity's Inception-v3 weights ({INCEPTION_FILE}) are not available offline. Download "
        f"{INCEPTION_URL} into {INCEPTION_CACHE.parent}/ or pass inception_weights_path=... "
        f"Cause: {type(cause).__name__}: {cause}"
    )
