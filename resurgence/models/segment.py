"""Concept segmentation for MACE's attention loss: phrase -> foreground masks.

MACE (Lu et al.) trains each per-concept LoRA to suppress cross-attention inside the region
that Grounded-SAM finds for the concept phrase. `GroundedSAMSegmenter` is that pipeline
(Grounding DINO boxes from the phrase, then SAM masks from the boxes) through transformers;
`resurgence.toyworld.detector.ToySegmenter` is the toy world's trained stand-in. Both satisfy `Segmenter`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from resurgence.models.clip import to_pil_list


@runtime_checkable
class Segmenter(Protocol):
    def segment(self, images: list[Image.Image], phrase: str) -> np.ndarray:
        """bool masks ``N x H x W`` (each at its image's size; images of one call share a size)."""
        ...


def dino_caption(phrase: str) -> str:
    """Grounding DINO expects lower-case text ending in a period."""
    p = phrase.strip().lower()
    return p if p.endswith(".") else p + "."


def union_masks(masks: torch.Tensor | np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Union over boxes of SAM's per-box masks (``K x 1 x H x W`` or ``K x H x W``); empty if K == 0."""
    m = np.asarray(masks, dtype=bool)
    if m.size == 0 or m.shape[0] == 0:
        return np.zeros(size_hw, dtype=bool)
    return m.reshape(m.shape[0], -1, *m.shape[-2:]).any(axis=(0, 1))


class GroundedSAMSegmenter:
    """Grounded-SAM through transformers: Grounding DINO boxes for the phrase, SAM masks from the boxes.

    Defaults mirror MACE's setup (Grounding DINO, SAM ViT-H). Models load from local paths or the
    HF cache only, unless ``local_files_only=False``.
    """

    def __init__(
        self,
        dino_id_or_path: str | os.PathLike = "IDEA-Research/grounding-dino-base",
        sam_id_or_path: str | os.PathLike = "facebook/sam-vit-huge",
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        device: str | torch.device = "cpu",
        local_files_only: bool = True,
        batch_size: int = 8,
    ) -> None:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, SamModel, SamProcessor

        self.device = torch.device(device)
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.batch_size = batch_size
        try:
            self.dino_processor = AutoProcessor.from_pretrained(
                str(dino_id_or_path), local_files_only=local_files_only
            )
            self.dino = AutoModelForZeroShotObjectDetection.from_pretrained(
                str(dino_id_or_path), local_files_only=local_files_only
            )
            self.sam_processor = SamProcessor.from_pretrained(
                str(sam_id_or_path), local_files_only=local_files_only
            )
            self.sam = SamModel.from_pretrained(str(sam_id_or_path), local_files_only=local_files_only)
        except OSError as e:
            raise OSError(
                f"Grounded-SAM weights not found locally ({dino_id_or_path!r}, {sam_id_or_path!r}); download them "
                f"with `huggingface-cli download {dino_id_or_path}` and `huggingface-cli download {sam_id_or_path}` "
                f"or pass local folders. Cause: {e}"
            ) from e
        self.dino.to(self.device).eval()
        self.sam.to(self.device).eval()

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image], phrase: str) -> list[np.ndarray]:
        """Per image, the ``K x 4`` xyxy pixel boxes that Grounding DINO grounds to ``phrase``."""
        text = dino_caption(phrase)
        boxes: list[np.ndarray] = []
        for i in range(0, len(images), self.batch_size):
            chunk = list(images[i : i + self.batch_size])
            inputs = self.dino_processor(images=chunk, text=[text] * len(chunk), return_tensors="pt").to(
                self.device
            )
            outputs = self.dino(**inputs)
            results = self.dino_processor.post_process_grounded_object_detection(
                outputs,
                inputs["input_ids"],
                threshold=self.box_threshold,
                text_threshold=self.text_threshold,
                target_sizes=[im.size[::-1] for im in chunk],
            )
            boxes += [r["boxes"].detach().float().cpu().numpy().reshape(-1, 4) for r in results]
        return boxes

    @torch.no_grad()
    def masks_from_boxes(self, image: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """Union of SAM's single-mask outputs for each box; bool ``H x W``."""
        size_hw = (image.size[1], image.size[0])
        if len(boxes) == 0:
            return np.zeros(size_hw, dtype=bool)
        inputs = self.sam_processor(
            image, input_boxes=[[list(map(float, b)) for b in boxes]], return_tensors="pt"
        )
        inputs = inputs.to(self.device)
        outputs = self.sam(**inputs, multimask_output=False)
        masks = self.sam_processor.image_processor.post_process_masks(
            outputs.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )[0]
        return union_masks(masks.numpy(), size_hw)

    def segment(self, images: list[Image.Image], phrase: str) -> np.ndarray:
        pil = to_pil_list(images)
        out = []
        for idx, (im, b) in enumerate(zip(pil, self.detect(pil, phrase), strict=True)):
            if len(b) == 0:
                warnings.warn(
                    f"Grounded-SAM found no box for {phrase!r} in image {idx}; using an empty mask",
                    stacklevel=2,
                )
            out.append(self.masks_from_boxes(im, b))
        return np.stack(out) if out else np.zeros((0, 0, 0), dtype=bool)
