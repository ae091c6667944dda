"""Identity accuracy: the paper's celebrity metric (top-1 of the Giphy Celebrity Detector)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from resurgence.evaluate.base import CONCEPT_KEY, check_inputs, make_rows, presence_rows, same_concept


class Detector(Protocol):
    def predict(self, images: Sequence[Image.Image] | np.ndarray) -> tuple[list[str], np.ndarray]: ...


class IdentityAccuracy:
    """1 if the detector's top-1 identity is the record's concept, else 0.

    The toy detector may answer "<none>" (no known identity): that counts as 0, exactly like
    a GCD miss. A detector that scores every class (``class_names``, the columns of its probabilities:
    the toy detector, CLIP zero-shot) also gives the true identity's probability and rank
    (`PRESENCE_METRICS`); GCD reports its top-1 only.
    """

    name = "identity_acc"

    def __init__(self, detector: Detector) -> None:
        self.detector = detector

    def evaluate(self, images: list[Image.Image], records: list[dict]) -> list[dict]:
        check_inputs(images, records, [CONCEPT_KEY])
        if not images:
            return []
        labels, probs = self.detector.predict(images)
        conf = np.asarray(probs).max(1)
        rows = make_rows(
            self.name,
            records,
            [float(same_concept(p, r[CONCEPT_KEY])) for p, r in zip(labels, records, strict=True)],
            labels,
        )
        for row, c in zip(rows, conf, strict=True):
            row["confidence"] = float(c)
        names = getattr(self.detector, "class_names", None)
        if names is not None and np.asarray(probs).shape[1] == len(names):
            rows += presence_rows(self.name, records, probs, names, labels)
        return rows
