"""The evaluator interface and the per-world registry.

Every metric maps generated images + their generation records to tidy rows (one per image),
so `resurgence.metrics.tables` can aggregate any metric the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


IDENTITY_METRICS = {"clip_zero_shot": "identity_acc_clip"}  # detector kind -> metric; others: identity_acc


def identity_metric(models: Mapping[str, Any]) -> str:
    """The identity-accuracy metric a study's detector reports: ``identity_acc`` (toy detector, GCD)
    or ``identity_acc_clip`` (``{"kind": "clip_zero_shot"}``: a different metric, never mixed with GCD's)."""
    from resurgence.evaluate.identity import detector_kind

    return IDENTITY_METRICS.get(detector_kind(models), "identity_acc")


def get_evaluators(
    models: Mapping[str, Any],
    label_set: Mapping[str, Sequence[str]] | None = None,
    device: str = "cpu",
    names: Sequence[str] | None = None,
    world: Any | None = None,
) -> dict[str, Evaluator]:
    """Evaluators of a world, keyed by metric name; only ``names`` are built (models load lazily otherwise).

    ``models`` is the study's model-spec dict (`resurgence.study.model_specs`); keys read:
    ``clip`` (a `load_clip` spec) and ``detector`` (`resurgence.evaluate.identity.load_identity_detector`:
    kind ``toy``, ``gcd`` or ``clip_zero_shot``). ``label_set`` (label -> phrases) is the task's
    accuracy label set; it defaults to ``world``'s objects for CLIP accuracy. Identity metrics take
    their celebrity names from ``label_set``'s keys (else ``world``'s identities).

    ``identity_acc`` is the detector's (toy or GCD); a ``clip_zero_shot`` detector reports
    ``identity_acc_clip`` instead (`identity_metric`), and ``identity_acc_clip`` can also be asked
    for beside a GCD/toy detector (CLIP zero-shot with ``models["clip"]``).
    """
    from resurgence.evaluate.celebrity import ClipIdentityAccuracy
    from resurgence.evaluate.clip_metrics import ClipAccuracy, ClipScore
    from resurgence.evaluate.identity import IdentityAccuracy, detector_kind, load_identity_detector
    from resurgence.models.clip import load_clip

    known = ("identity_acc", "identity_acc_clip", "clip_acc", "clip_score")
    unknown = set(names or ()) - set(known)
    if unknown:
        raise ValueError(f"unknown evaluators {sorted(unknown)}; known: {list(known)}")
    if label_set is not None:
        identity_names = list(label_set)
    else:
        identity_names = [c.name for c in getattr(world, "identities", ())] if world is not None else []
    if label_set is None and world is not None:
        label_set = object_label_set(world)
    if names is None:  # everything this world can build
        names = [identity_metric(models)] + (["clip_acc"] if label_set is not None else []) + ["clip_score"]
    if "clip_acc" in names and label_set is None:
        raise ValueError("clip_acc needs a label_set (or a world to take the object labels from)")
    if "identity_acc" in names and identity_metric(models) != "identity_acc":
        raise ValueError(
            f"the {detector_kind(models)!r} detector is reported as {identity_metric(models)!r}, not 'identity_acc' "
            "(identity_acc is the toy detector's or the Giphy Celebrity Detector's); ask for that metric instead"
        )
    if "identity_acc_clip" in names and not identity_names:
        raise ValueError("identity_acc_clip needs celebrity names: a label_set (or a world with identities)")
    clip_cache: list[Any] = []

    def clip() -> Any:
        if not clip_cache:
            if "clip" not in models:
                raise KeyError("model specs have no 'clip'")
            clip_cache.append(load_clip(models["clip"], device=device))
        return clip_cache[0]

    def clip_identity() -> Evaluator:
        spec = models.get("detector")
        if detector_kind(models) != "clip_zero_shot":
            spec = {"kind": "clip_zero_shot"}
        detector = load_identity_detector({**models, "detector": spec}, device, identity_names, clip=clip())
        return ClipIdentityAccuracy(detector)

    builders: dict[str, Callable[[], Evaluator]] = {
        "identity_acc": lambda: IdentityAccuracy(load_identity_detector(models, device, identity_names)),
        "identity_acc_clip": clip_identity,
        "clip_acc": lambda: ClipAccuracy(clip(), label_set or {}),
        "clip_score": lambda: ClipScore(clip()),
    }
    return {n: builders[n]() for n in names}


def fid_kwargs(models: Mapping[str, Any], device: str = "cpu") -> dict[str, Any]:
    """`frechet_distance` options of a world: toy CLIP features for the toy CLIP, Inception otherwise."""
    clip_spec = models.get("clip") or {}
    if clip_spec.get("kind") == "toy":
        from resurgence.models.clip import load_clip

        return {"features": "clip", "clip": load_clip(clip_spec, device=device)}
    return {"features": "inception", "cuda": str(device).startswith("cuda")}
