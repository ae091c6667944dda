"""Identity accuracy: the paper's celebrity metric (top-1 of the Giphy Celebrity Detector)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

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


DETECTOR_KINDS = ("toy", "gcd", "clip_zero_shot")


def detector_kind(models: Mapping[str, Any]) -> str:
    """The kind of ``models["detector"]`` ("toy" for a bare path or a spec without kind)."""
    spec = models.get("detector")
    if isinstance(spec, Mapping):
        return str(spec.get("kind", "toy"))
    return "toy"


def load_identity_detector(
    models: Mapping[str, Any],
    device: str = "cpu",
    names: Sequence[str] = (),
    clip: Any | None = None,
) -> Detector:
    """The detector named by ``models["detector"]``, by its ``kind``:

    * ``{"kind": "toy", "path": dir}`` (or a bare path): the toy world's `IdentityDetector`;
    * ``{"kind": "gcd", "path": resources_dir, "python": interpreter}``: the Giphy Celebrity Detector
      (`resurgence.evaluate.celebrity.GCDDetector`; ``python`` optional, see there);
    * ``{"kind": "clip_zero_shot", "templates": [...], "background": [...]}`` (both optional): CLIP
      zero-shot over ``names`` (`resurgence.evaluate.celebrity.ClipCelebrityIdentifier`) with ``clip``
      (a `ClipModel`), else ``models["clip"]`` loaded here.

    ``names`` are the study's celebrity names: GCD labels are spelled as these, and they are CLIP's classes.
    """
    spec = models.get("detector")
    if isinstance(spec, (str, Path)):
        spec = {"kind": "toy", "path": str(spec)}
    if not spec:
        raise KeyError("model specs have no 'detector'")
    kind = spec.get("kind", "toy")
    if kind == "toy":
        from resurgence.toyworld.detector import IdentityDetector

        path = spec.get("path")
        if not path or not (Path(path) / "detector.json").is_file():
            raise FileNotFoundError(f"toy identity detector not found at {path!r} (run train_detector first)")
        return IdentityDetector.load(path, device)
    if kind == "gcd":
        from resurgence.evaluate.celebrity import load_gcd_detector

        return load_gcd_detector(spec, names=names, device=device)
    if kind == "clip_zero_shot":
        from resurgence.evaluate.celebrity import CLIP_BACKGROUND, CLIP_TEMPLATES, ClipCelebrityIdentifier

        if clip is None:
            from resurgence.models.clip import load_clip

            if "clip" not in models:
                raise KeyError("a clip_zero_shot detector needs model specs with 'clip'")
            clip = load_clip(models["clip"], device=device)
        return ClipCelebrityIdentifier(
            clip,
            list(names),
            templates=tuple(spec.get("templates") or CLIP_TEMPLATES),
            background=tuple(spec.get("background") or CLIP_BACKGROUND),
        )
    raise ValueError(f"identity detector kind must be one of {list(DETECTOR_KINDS)}, got {kind!r}")
