"""Identity accuracy: the paper's celebrity metric (top-1 of the Giphy Celebrity Detector)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from resurgence.evaluate.base import CONCEPT_KEY, check_inputs, make_rows, same_concept


class Detector(Protocol):
    def predict(self, images: Sequence[Image.Image] | np.ndarray) -> tuple[list[str], np.ndarray]: ...


class IdentityAccuracy:
    """1 if the detector's top-1 identity is the record's concept, else 0.

    The toy detector may answer "<none>" (no known identity): that counts as 0, exactly like
    a GCD miss.
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
        return rows


def load_identity_detector(models: Mapping[str, Any], device: str = "cpu") -> Detector:
    """The detector named by ``models["detector"]``: ``{"kind": "toy", "path": dir}`` (or a bare path).

    Any other kind (the real world's Giphy Celebrity Detector) is not wired yet: wrap it in an
    object with ``predict(images) -> (labels, probs)`` and pass it to `IdentityAccuracy`.
    """
    spec = models.get("detector")
    if isinstance(spec, (str, Path)):
        spec = {"kind": "toy", "path": str(spec)}
    if not spec:
        raise KeyError("model specs have no 'detector'")
    if spec.get("kind", "toy") == "toy":
        from resurgence.toyworld.detector import IdentityDetector

        path = spec.get("path")
        if not path or not (Path(path) / "detector.json").is_file():
            raise FileNotFoundError(f"toy identity detector not found at {path!r} (run train_detector first)")
        return IdentityDetector.load(path, device)
    raise NotImplementedError(
        f"identity detector of kind {spec.get('kind')!r}: the Giphy Celebrity Detector adapter is not implemented; "
        "wrap it in an object with predict(images) -> (labels, probs) and pass it to IdentityAccuracy"
    )
