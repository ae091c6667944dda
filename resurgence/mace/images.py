"""MACE's training images: every concept's, drawn by the model being erased, in as few batches as they fill.

MACE draws ``images_per_concept`` (8) images of each concept before it changes any weight. Drawn one concept
at a time, identity_100's 800 images took 100 batches of 8, 70 s of its 189 s erasure on a GPU shared by 16
jobs (2026-12-06, docs/study_speed.md); drawn together they fill batches of the generation's ``batch_size``.
The batches are as even as their count allows (`even_batch`): a single concept's 8 images are still one batch
of 8, drawn exactly as before, and no batch is padded with more than a few images. Each image is a function of
its prompt, seed and the request's size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from resurgence.generate.engine import GenerationConfig, generate
from resurgence.mace.erase import ImageRequest, ImageSource

# The masks of one concept's images: (concept name, its images) -> bool array (n, height, width).
MaskSource = Callable[[str, list[Image.Image]], np.ndarray]


def even_batch(images: int, batch_size: int) -> int:
    """The batch size that draws ``images`` in the fewest batches of at most ``batch_size``, as evenly as they
    split (the last batch is padded to it)."""
    batches = -(-images // batch_size)
    return -(-images // batches)


def request_prompts(request: ImageRequest, prompts: Sequence[str]) -> tuple[list[str], list[int]]:
    """The concept's prompts in turn and consecutive seeds, one pair per image asked for."""
    return [prompts[i % len(prompts)] for i in range(request.n)], [request.seed + i for i in range(request.n)]


def concept_image_source(
    pipe,
    prompts_of: Mapping[str, Sequence[str]],
    cfg: GenerationConfig,
    masks_of: MaskSource,
    device: str,
    together: bool = True,
    progress: bool = True,
) -> ImageSource:
    """An `ImageSource` that samples ``pipe`` at ``cfg``: every request's images in one `generate` call
    (``together``), or each request's alone in one batch of its own size (how they were drawn before
    2026-12-06; kept as the benchmark's baseline)."""

    def draw(requests: Sequence[ImageRequest]) -> list[tuple[list[Image.Image], np.ndarray]]:
        asked = [request_prompts(r, prompts_of[r.name]) for r in requests]
        if together:
            prompts, seeds = [p for ps, _ in asked for p in ps], [s for _, ss in asked for s in ss]
            even = dataclasses.replace(cfg, batch_size=even_batch(len(prompts), cfg.batch_size))
            images = generate(
                pipe, prompts, seeds, even, device=device, progress=progress, pad_to_batch=False
            )
            per_request, start = [], 0
            for r in requests:
                per_request.append(images[start : start + r.n])
                start += r.n
        else:
            per_request = [
                generate(pipe, ps, ss, cfg, device=device, progress=False, pad_to_batch=False)
                for ps, ss in asked
            ]
        return [(imgs, masks_of(r.name, imgs)) for r, imgs in zip(requests, per_request, strict=True)]

    return draw
