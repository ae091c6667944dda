"""Which evaluators and identity detectors a world's model specs build: the one module that knows them all.

`base` holds the interface; `identity`, `celebrity` and `clip_metrics` implement it and import only `base`
(and `celebrity` `identity`); the stages ask here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from resurgence.evaluate.base import Evaluator, object_label_set
from resurgence.evaluate.celebrity import (
    CLIP_BACKGROUND,
    CLIP_TEMPLATES,
    ClipCelebrityIdentifier,
    ClipIdentityAccuracy,
    load_gcd_detector,
)
from resurgence.evaluate.clip_metrics import ClipAccuracy, ClipScore
from resurgence.evaluate.fid import FrechetDistance
from resurgence.evaluate.identity import Detector, IdentityAccuracy
from resurgence.models.clip import load_clip

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
        return load_gcd_detector(spec, names=names, device=device)
    if kind == "clip_zero_shot":
        if clip is None:
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


IDENTITY_METRICS = {"clip_zero_shot": "identity_acc_clip"}  # detector kind -> metric; others: identity_acc


def identity_metric(models: Mapping[str, Any]) -> str:
    """The identity-accuracy metric a study's detector reports: ``identity_acc`` (toy detector, GCD)
    or ``identity_acc_clip`` (``{"kind": "clip_zero_shot"}``: a different metric, never mixed with GCD's)."""
    return IDENTITY_METRICS.get(detector_kind(models), "identity_acc")


def get_evaluators(
    models: Mapping[str, Any],
    label_set: Mapping[str, Sequence[str]] | None = None,
    device: str = "cpu",
    names: Sequence[str] | None = None,
    world: Any | None = None,
    reference: Sequence[Any] | None = None,
) -> dict[str, Evaluator]:
    """Evaluators of a world, keyed by metric name; only ``names`` are built (models load lazily otherwise).

    ``models`` is the study's model-spec dict (`resurgence.study.model_specs`); keys read:
    ``clip`` (a `load_clip` spec) and ``detector`` (`load_identity_detector`:
    kind ``toy``, ``gcd`` or ``clip_zero_shot``). ``label_set`` (label -> phrases) is the task's
    accuracy label set; it defaults to ``world``'s objects for CLIP accuracy. Identity metrics take
    their celebrity names from ``label_set``'s keys (else ``world``'s identities).

    ``identity_acc`` is the detector's (toy or GCD); a ``clip_zero_shot`` detector reports
    ``identity_acc_clip`` instead (`identity_metric`), and ``identity_acc_clip`` can also be asked
    for beside a GCD/toy detector (CLIP zero-shot with ``models["clip"]``). ``fid`` scores a set of images
    against ``reference`` (the base model's caption images) with the world's features (`fid_kwargs`).
    """
    known = ("identity_acc", "identity_acc_clip", "clip_acc", "clip_score", "fid")
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
    if "fid" in names and reference is None:
        raise ValueError("fid needs the reference images (the base model's caption images)")
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
        "fid": lambda: FrechetDistance(reference or [], **fid_kwargs(models, device, clip)),
    }
    return {n: builders[n]() for n in names}


def fid_kwargs(
    models: Mapping[str, Any], device: str = "cpu", clip: Callable[[], Any] | None = None
) -> dict[str, Any]:
    """`frechet_distance` options of a world: toy CLIP features for the toy CLIP (``clip()``, else loaded
    here), Inception otherwise."""
    clip_spec = models.get("clip") or {}
    if clip_spec.get("kind") == "toy":
        return {"features": "clip", "clip": clip() if clip else load_clip(clip_spec, device=device)}
    return {"features": "inception", "cuda": str(device).startswith("cuda")}
