"""The evaluator interface and the helpers every evaluator shares (`registry` builds them).

Every metric maps generated images + their generation records to tidy rows (one per image),
so `resurgence.metrics.tables` can aggregate any metric the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

CONCEPT_KEY = "concept"  # record field naming the concept a prompt asks for
PROMPT_KEY = "prompt"  # record field holding the prompt an image was generated from


@runtime_checkable
class Evaluator(Protocol):
    name: str

    def evaluate(self, images: list[Image.Image], records: list[dict]) -> list[dict]:
        """One row per image: the record's fields + ``metric``, ``value`` (float), ``predicted``."""
        ...


def make_rows(
    metric: str, records: Sequence[Mapping[str, Any]], values: Sequence[float], predicted: Sequence[Any]
) -> list[dict]:
    if not (len(records) == len(values) == len(predicted)):
        raise ValueError(
            f"{metric}: {len(records)} records, {len(values)} values, {len(predicted)} predictions"
        )
    return [
        {**r, "metric": metric, "value": float(v), "predicted": p}
        for r, v, p in zip(records, values, predicted, strict=True)
    ]


def check_inputs(images: Sequence[Any], records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> None:
    if len(images) != len(records):
        raise ValueError(f"{len(images)} images but {len(records)} records")
    for i, r in enumerate(records):
        missing = [k for k in keys if k not in r]
        if missing:
            raise KeyError(f"record {i} lacks {missing}: {r}")


# Continuous measures of a concept's presence beside each top-1 accuracy: the classifier's probability
# of the true concept and its rank among the classes (1 = top-1). A concept on its way back shows in
# them before it wins the top-1 (issue: the toy world must be able to show resurgence).
PRESENCE_METRICS: dict[str, tuple[str, str]] = {
    "identity_acc": ("identity_prob", "identity_rank"),
    "identity_acc_clip": ("identity_prob_clip", "identity_rank_clip"),
    "clip_acc": ("clip_prob", "clip_rank"),
}


def true_class_presence(
    probs: np.ndarray, class_names: Sequence[str], concepts: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the probability of its own concept and that concept's rank (1 + the classes scored
    strictly higher); NaN for a concept that is not one of ``class_names``."""
    p = np.asarray(probs, dtype=np.float64)
    index = {concept_key(c): i for i, c in enumerate(class_names)}
    cols = np.array([index.get(concept_key(c), -1) for c in concepts], dtype=np.int64)
    known = cols >= 0
    true = np.where(known, p[np.arange(len(p)), np.where(known, cols, 0)], np.nan)
    rank = np.where(known, 1 + (p > true[:, None]).sum(1), np.nan)
    return true, rank


def presence_rows(
    metric: str,
    records: Sequence[Mapping[str, Any]],
    probs: np.ndarray,
    class_names: Sequence[str],
    predicted: Sequence[Any],
) -> list[dict]:
    """The `PRESENCE_METRICS` rows of an accuracy ``metric`` (probability, then rank, per image)."""
    prob_metric, rank_metric = PRESENCE_METRICS[metric]
    true, rank = true_class_presence(probs, class_names, [r[CONCEPT_KEY] for r in records])
    return make_rows(prob_metric, records, true, predicted) + make_rows(rank_metric, records, rank, predicted)


def concept_key(name: Any) -> str:
    """A concept name as compared: case- and whitespace-insensitive ("Jennifer  Aniston" -> "jennifer aniston")."""
    return " ".join(str(name).lower().split())


def same_concept(a: Any, b: Any) -> bool:
    return a is not None and b is not None and concept_key(a) == concept_key(b)


def object_label_set(world: Any) -> dict[str, list[str]]:
    """CLIP-accuracy labels of a world's objects: each name with its synonyms."""
    return {c.name: list(c.names) for c in world.objects}
