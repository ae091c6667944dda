"""Celebrity identification on real images: the Giphy Celebrity Detector (GCD) and a CLIP zero-shot fallback.

Both are `resurgence.evaluate.identity.Detector`s: ``predict(images) -> (top-1 labels, probs)``, the
label being a concept name of the study, a name the study does not know, or ``"<none>"``.

* `GCDDetector` (metric ``identity_acc``, the paper's): the Giphy Celebrity Detector
  (github.com/Giphy/celeb-detection-oss; paper ref. [17]), run as MACE's ``metrics/evaluate_by_GCD.py``
  does: MTCNN face detection (margin 0.2), each face resized to 224 (bilinear), GCD's ResNet-50
  recogniser, and the top-1 of GCD's first (largest) face cluster; an image without a face answers
  ``"<none>"``. GCD needs Python 3.6, TensorFlow 1.15 and torch 0.4 (its requirements_*.txt), which
  cannot share an environment with this package: give its interpreter as ``python`` in the spec and
  it runs in a subprocess. Without ``python`` it is imported in-process (``model_training`` package).
* `ClipCelebrityIdentifier` (metric ``identity_acc_clip``, NOT the paper's): open_clip zero-shot over
  the study's celebrity names plus background classes ("a person", "an object"), so a face that is
  nobody in particular answers ``"<none>"`` instead of the closest name. It needs nothing beyond
  this package; its numbers are a different metric and are reported under a different name.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from resurgence.evaluate.identity import IdentityAccuracy
from resurgence.models.availability import GCD_FILES, GCD_HOWTO
from resurgence.models.clip import ClipModel, to_pil_list

NONE_LABEL = "<none>"
# Paper App. C.1 identity templates, as zero-shot prompts (generated images are portraits, sketches, paintings).
CLIP_TEMPLATES: tuple[str, ...] = (
    "a photo of {}",
    "a portrait of {}",
    "a sketch of {}",
    "an oil painting of {}",
    "{} in an official photo",
    "an image capturing {} at a public event",
)
# Background classes: a generic face or no face at all maps to NONE_LABEL, not to the closest name.
CLIP_BACKGROUND: tuple[str, ...] = ("a person", "an object")

GCD_INSTALL = (
    "install the Giphy Celebrity Detector in its own environment (Python 3.6; github.com/Giphy/celeb-detection-oss, "
    "following github.com/Shilin-LU/MACE/blob/main/metrics/README.md: `pip install -r requirements_gpu.txt && "
    "pip install -e .` in the clone, and np.load(..., allow_pickle=True) in "
    "model_training/preprocessors/face_detection/network.py), then set the detector spec's 'python' to that "
    "environment's interpreter, e.g. {kind: gcd, path: RESOURCES, python: /path/to/gcd-env/bin/python}"
)


def name_key(name: Any) -> str:
    """Comparison key of a celebrity name: GCD's Freebase suffix dropped, case/underscores/punctuation ignored.

    ``"Jennifer_Aniston_[m.0k6nt]"``, ``"jennifer aniston"`` and ``"Jennifer-Aniston"`` share a key.
    """
    s = str(name).split("_[", 1)[0]
    s = re.sub(r"\[[^\]]*\]\s*$", "", s)
    return " ".join(re.sub(r"[^0-9a-z]+", " ", s.lower()).split())


def gcd_display_name(label: Any) -> str:
    """GCD's folder-name label as MACE prints it: ``"Jennifer_Aniston_[m.0k6nt]"`` -> ``"Jennifer Aniston"``."""
    return str(label).split("_[", 1)[0].replace("_", " ").strip()


# ----------------------------------------------------------------------------- GCD

# GCD's worker: run by GCD's own interpreter as a script, or imported here (`InProcessGCD`).
GCD_WORKER = Path(__file__).with_name("gcd_worker.py")


class GCDBackend(Protocol):
    def faces(self, arrays: Sequence[np.ndarray]) -> list[dict[str, Any] | None]:
        """Per image: None (no face) or ``{"top": [[gcd_label, prob], ...], "faces": n}``."""
        ...


def check_gcd_resources(path: str | Path) -> Path:
    """The resources folder, or FileNotFoundError naming what is missing and how to get it."""
    p = Path(str(path)).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(
            f"Giphy Celebrity Detector resources folder {str(p)!r} does not exist; {GCD_HOWTO}"
        )
    missing = [f for f in GCD_FILES if not (p / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Giphy Celebrity Detector resources folder {str(p)!r} lacks {', '.join(missing)}; {GCD_HOWTO}"
        )
    return p


class InProcessGCD:
    """GCD imported into this interpreter (its ``model_training`` package must be importable here)."""

    def __init__(self, resources: str | Path, use_cuda: bool = False) -> None:
        from resurgence.evaluate import gcd_worker

        try:
            self.models = gcd_worker.load(str(resources), use_cuda=use_cuda)
        except ImportError as e:
            raise ImportError(
                f"the Giphy Celebrity Detector (package 'model_training') cannot be imported here ({e}); {GCD_INSTALL}"
            ) from e
        self._predict = gcd_worker.predict

    def faces(self, arrays: Sequence[np.ndarray]) -> list[dict[str, Any] | None]:
        return self._predict(self.models, arrays)


class SubprocessGCD:
    """GCD run by another interpreter (its own environment): images go through a temp folder of PNGs."""

    def __init__(
        self,
        python: str | Path,
        resources: str | Path,
        use_cuda: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.python = str(Path(str(python)).expanduser())
        if not Path(self.python).is_file():
            raise FileNotFoundError(f"detector.python {self.python!r} does not exist; {GCD_INSTALL}")
        self.resources = str(resources)
        self.use_cuda = use_cuda
        self.env = dict(env) if env is not None else None

    def faces(self, arrays: Sequence[np.ndarray]) -> list[dict[str, Any] | None]:
        if len(arrays) == 0:
            return []
        with tempfile.TemporaryDirectory(prefix="gcd_") as tmp:
            in_dir = Path(tmp, "images")
            in_dir.mkdir()
            for i, a in enumerate(arrays):
                Image.fromarray(np.asarray(a, dtype=np.uint8)).save(in_dir / f"{i:08d}.png")
            out = Path(tmp, "out.json")
            env = dict(os.environ if self.env is None else self.env)
            proc = subprocess.run(
                [
                    self.python,
                    "-c",  # the worker's source, run from the temp folder: nothing of this package shadows GCD's
                    GCD_WORKER.read_text(),
                    self.resources,
                    str(in_dir),
                    str(out),
                    "1" if self.use_cuda else "0",
                ],
                capture_output=True,
                text=True,
                env=env,
                cwd=tmp,
            )
            if proc.returncode != 0 or not out.is_file():
                tail = (proc.stderr or proc.stdout or "")[-3000:]
                hint = f"; {GCD_INSTALL}" if "No module named" in tail else ""
                raise RuntimeError(
                    f"the Giphy Celebrity Detector failed in {self.python} (exit {proc.returncode}){hint}:\n{tail}"
                )
            result = json.loads(out.read_text())
        if len(result) != len(arrays):
            raise RuntimeError(f"GCD answered for {len(result)} of {len(arrays)} images")
        return result


class GCDDetector:
    """`Detector` over a GCD backend: top-1 celebrity of the image's first face cluster, mapped to ``names``.

    ``names`` (the study's concept names) fix how labels are spelled: a GCD label whose `name_key`
    matches one is reported as that name; any other as GCD's display name ("Jennifer Aniston");
    no face as ``none_label``. ``probs`` is ``N x 1``: GCD's top-1 probability (0 without a face).
    ``last_top`` keeps the last call's top-n lists (display names) for inspection.
    """

    def __init__(self, backend: GCDBackend, names: Sequence[str] = (), none_label: str = NONE_LABEL) -> None:
        self.backend = backend
        self.none_label = none_label
        self.by_key = {name_key(n): n for n in names}
        self.last_top: list[list[tuple[str, float]]] = []

    def map_label(self, gcd_label: Any) -> str:
        return self.by_key.get(name_key(gcd_label), gcd_display_name(gcd_label))

    def predict(self, images: Sequence[Image.Image] | np.ndarray) -> tuple[list[str], np.ndarray]:
        arrays = [np.asarray(im) for im in to_pil_list(images)]
        faces = self.backend.faces(arrays)
        if len(faces) != len(arrays):
            raise RuntimeError(f"GCD backend answered for {len(faces)} of {len(arrays)} images")
        labels, probs, tops = [], np.zeros((len(arrays), 1), np.float32), []
        for i, f in enumerate(faces):
            top = list((f or {}).get("top") or [])
            tops.append([(gcd_display_name(lab), float(p)) for lab, p in top])
            if not top:
                labels.append(self.none_label)
                continue
            labels.append(self.map_label(top[0][0]))
            probs[i, 0] = float(top[0][1])
        self.last_top = tops
        return labels, probs


def load_gcd_detector(
    spec: Mapping[str, Any], names: Sequence[str] = (), device: str | torch.device = "cpu"
) -> GCDDetector:
    """``{"kind": "gcd", "path": resources_dir, "python": gcd_env_interpreter (optional), "use_cuda": bool}``.

    ``use_cuda`` defaults to whether ``device`` is CUDA.
    """
    path = spec.get("path")
    if not path:
        raise KeyError(f"detector spec {dict(spec)} needs 'path' (GCD's resources folder); {GCD_HOWTO}")
    resources = check_gcd_resources(path)
    use_cuda = bool(spec.get("use_cuda", str(device).startswith("cuda")))
    python = spec.get("python")
    backend: GCDBackend
    if python:
        backend = SubprocessGCD(python, resources, use_cuda=use_cuda)
    else:
        backend = InProcessGCD(resources, use_cuda=use_cuda)
    return GCDDetector(backend, names)


# ----------------------------------------------------------------------------- CLIP zero-shot


class ClipCelebrityIdentifier:
    """`Detector` by CLIP zero-shot over celebrity names + background classes (NOT the paper's GCD).

    Each name's text embedding is the ensemble of ``templates``; each background phrase (``"a person"``,
    ``"an object"``) is a class built from the same templates. ``probs`` (``N x (len(names) + 1)``,
    columns ``class_names``) are the softmax of ``logit_scale * cosine`` with the background classes
    summed into the last column ``none_label``; the top-1 is the argmax of those columns.
    """

    def __init__(
        self,
        clip: ClipModel,
        names: Sequence[str],
        templates: Sequence[str] = CLIP_TEMPLATES,
        background: Sequence[str] = CLIP_BACKGROUND,
        none_label: str = NONE_LABEL,
    ) -> None:
        names = list(dict.fromkeys(names))
        if not names:
            raise ValueError("ClipCelebrityIdentifier needs at least one name")
        if not templates:
            raise ValueError("ClipCelebrityIdentifier needs at least one template")
        self.clip = clip
        self.none_label = none_label
        self.class_names = [*names, none_label]
        prompts = {f"name:{n}": [t.format(n) for t in templates] for n in names}
        prompts.update({f"bg:{b}": [t.format(b) for t in templates] for b in background})
        _, self.text_emb = clip.label_embeddings(prompts)
        self.n_names = len(names)
        self.logit_scale = clip.logit_scale

    @torch.no_grad()
    def predict_proba(self, images: Sequence[Image.Image] | np.ndarray) -> np.ndarray:
        img = self.clip.encode_images(images)
        if len(img) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        p = (self.logit_scale * img @ self.text_emb.T).softmax(-1)
        merged = torch.cat([p[:, : self.n_names], p[:, self.n_names :].sum(1, keepdim=True)], 1)
        return merged.numpy().astype(np.float32)

    def predict(self, images: Sequence[Image.Image] | np.ndarray) -> tuple[list[str], np.ndarray]:
        probs = self.predict_proba(images)
        return [self.class_names[i] for i in probs.argmax(1)], probs


class ClipIdentityAccuracy(IdentityAccuracy):
    """Identity accuracy under CLIP zero-shot: its own metric, never mixed with GCD's ``identity_acc``."""

    name = "identity_acc_clip"
