"""Segmenters: the toy U-Net wrapper and Grounded-SAM's box -> mask glue on tiny random models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from resurgence.models.segment import GroundedSAMSegmenter, Segmenter, dino_caption, union_masks
from resurgence.toyworld.detector import SegmenterNet, ToySegmenter, ToySegmenterModel


def rand_images(n: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_union_masks_and_caption_format():
    m = np.zeros((2, 1, 4, 5), bool)
    m[0, 0, 0, 0] = m[1, 0, 3, 4] = True
    u = union_masks(m, (4, 5))
    assert u.shape == (4, 5) and u.sum() == 2
    assert not union_masks(np.zeros((0, 1, 4, 5), bool), (4, 5)).any()
    assert dino_caption("  A Person ") == "a person." and dino_caption("a cat.") == "a cat."


def test_toy_segmenter_roundtrip_returns_masks_at_input_size(tmp_path):
    torch.manual_seed(0)
    ToySegmenterModel(SegmenterNet((4, 8)), 16, (4, 8)).save(tmp_path / "segmenter")
    seg = ToySegmenter.load(tmp_path / "segmenter")
    assert isinstance(seg, Segmenter)
    for size in (16, 24):
        masks = seg.segment(rand_images(3, size), "a person")
        assert masks.dtype == bool and masks.shape == (3, size, size)


@pytest.fixture(scope="module")
def tiny_grounded_sam(tmp_path_factory):
    """Randomly initialised Grounding DINO and SAM of a few 100k parameters, saved like hub checkpoints."""
    from resurgence.models.standins import write_random_grounded_sam

    root = tmp_path_factory.mktemp("gsam")
    write_random_grounded_sam(root, ["a the person dog photo of"], scale="tiny")
    return root


def test_grounded_sam_boxes_to_union_masks(tiny_grounded_sam):
    seg = GroundedSAMSegmenter(
        tiny_grounded_sam / "dino", tiny_grounded_sam / "sam", box_threshold=0.0, text_threshold=0.0
    )
    assert isinstance(seg, Segmenter)
    ims = rand_images(2, 48)
    boxes = seg.detect(ims, "a person")
    assert len(boxes) == 2 and all(b.ndim == 2 and b.shape[1] == 4 and len(b) > 0 for b in boxes)
    masks = seg.segment(ims, "a person")
    assert masks.dtype == bool and masks.shape == (2, 48, 48)
    # the union over boxes contains each single-box mask
    single = seg.masks_from_boxes(ims[0], boxes[0][:1])
    assert not (single & ~masks[0]).any()


def test_grounded_sam_without_boxes_warns_and_returns_empty_masks(tiny_grounded_sam):
    seg = GroundedSAMSegmenter(
        tiny_grounded_sam / "dino", tiny_grounded_sam / "sam", box_threshold=1.01, text_threshold=1.01
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = seg.segment(rand_images(2, 40), "a dog")
    assert masks.shape == (2, 40, 40) and not masks.any()
    assert sum("no box" in str(w.message) for w in caught) == 2


def test_grounded_sam_missing_weights_error_is_clear(tmp_path):
    with pytest.raises(OSError, match="Grounded-SAM weights not found"):
        GroundedSAMSegmenter(tmp_path / "nodino", tmp_path / "nosam")
