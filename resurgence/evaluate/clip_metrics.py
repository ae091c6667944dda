"""CLIP accuracy (object erasure) and CLIP score (general-capability check, COCO-5K in the paper)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from PIL import Image

from resurgence.evaluate.base import (
    CONCEPT_KEY,
    PROMPT_KEY,
    check_inputs,
    make_rows,
    presence_rows,
    same_concept,
)
from resurgence.models.clip import ClipModel

OBJECT_TEMPLATE = "a photo of the {}"


class ClipAccuracy:
    """1 if CLIP's zero-shot top-1 over the task's labels is the record's concept.

    Each label is the ensemble of "a photo of the {phrase}" over its name and synonyms, so a
    ship generated for "boat" counts as "ship" (MACE's evaluation protocol). The true label's
    probability (softmax of CLIP's ``logit_scale * cosine`` over the labels) and rank come beside it.
    """

    name = "clip_acc"

    def __init__(
        self, clip: ClipModel, label_set: Mapping[str, Sequence[str]], template: str = OBJECT_TEMPLATE
    ) -> None:
        self.clip = clip
        self.label_prompts = {
            label: [template.format(p) for p in phrases] for label, phrases in label_set.items()
        }
        self.labels, self.label_emb = clip.label_embeddings(self.label_prompts)

    def evaluate(self, images: list[Image.Image], records: list[dict]) -> list[dict]:
        check_inputs(images, records, [CONCEPT_KEY])
        if not images:
            return []
        cosine = self.clip.encode_images(images) @ self.label_emb.T
        pred = [self.labels[i] for i in cosine.argmax(1).tolist()]
        probs = (self.clip.logit_scale * cosine).softmax(-1).numpy()
        return make_rows(
            self.name,
            records,
            [float(same_concept(p, r[CONCEPT_KEY])) for p, r in zip(pred, records, strict=True)],
            pred,
        ) + presence_rows(self.name, records, probs, self.labels, pred)


def clip_score(clip: ClipModel, images: list[Image.Image], texts: Sequence[str]) -> torch.Tensor:
    """Per pair, 100 * max(cos(image, text), 0) (Hessel et al.; the usual "CLIP score" of T2I papers)."""
    img = clip.encode_images(images)
    txt = clip.encode_texts(list(texts))
    return 100.0 * (img * txt).sum(-1).clamp_min(0.0)


class ClipScore:
    """CLIP score of each image against its own prompt."""

    name = "clip_score"

    def __init__(self, clip: ClipModel) -> None:
        self.clip = clip

    def evaluate(self, images: list[Image.Image], records: list[dict]) -> list[dict]:
        check_inputs(images, records, [PROMPT_KEY])
        if not images:
            return []
        scores = clip_score(self.clip, images, [r[PROMPT_KEY] for r in records])
        return make_rows(self.name, records, scores.tolist(), [None] * len(records))
