"""Celebrity identification: the GCD adapter (fake GCD backends) and CLIP zero-shot (the toy world's CLIP)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resurgence.evaluate.base import Evaluator
from resurgence.evaluate.celebrity import (
    NONE_LABEL,
    ClipCelebrityIdentifier,
    GCDDetector,
    InProcessGCD,
    SubprocessGCD,
    gcd_display_name,
    load_gcd_detector,
    name_key,
)
from resurgence.evaluate.identity import IdentityAccuracy
from resurgence.evaluate.registry import get_evaluators, identity_metric, load_identity_detector
from resurgence.models.availability import GCD_FILES

ROOT = Path(__file__).resolve().parents[1]
TOY_CLIP = ROOT / "resources" / "toyworld" / "clip"
NAMES = ["Jennifer Aniston", "Dr Dre", "Melania Trump"]


def solid(rgb: tuple[int, int, int], size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), rgb)


# ----------------------------------------------------------------------------- GCD: label mapping


def test_name_key_and_display_name():
    assert name_key("Jennifer_Aniston_[m.0k6nt]") == name_key("jennifer aniston") == "jennifer aniston"
    assert name_key("Dr._Dre_[m.01vw20_]") == name_key("Dr Dre")
    assert name_key("Jennifer-Aniston") == name_key("JENNIFER  ANISTON")
    assert gcd_display_name("Jennifer_Aniston_[m.0k6nt]") == "Jennifer Aniston"
    assert gcd_display_name("50_Cent_[m.01vvyc_]") == "50 Cent"


class FakeBackend:
    """Answers from the image's colour: red -> Aniston, green -> Dr Dre, blue -> unknown, black -> no face."""

    def __init__(self):
        self.calls = 0

    def faces(self, arrays):
        self.calls += 1
        out = []
        for a in arrays:
            r, g, b = (int(x) for x in a.reshape(-1, 3).mean(0))
            if max(r, g, b) < 10:
                out.append(None)
            elif r > 128:
                out.append(
                    {"top": [["Jennifer_Aniston_[m.0k6nt]", 0.9], ["Brad_Pitt_[m.0c6qh]", 0.05]], "faces": 1}
                )
            elif g > 128:
                out.append({"top": [["Dr._Dre_[m.01vw20_]", 0.7]], "faces": 2})
            else:
                out.append({"top": [["Brad_Pitt_[m.0c6qh]", 0.6]], "faces": 1})
        return out


def test_gcd_detector_maps_labels_and_no_face():
    det = GCDDetector(FakeBackend(), NAMES)
    imgs = [solid((255, 0, 0)), solid((0, 255, 0)), solid((0, 0, 255)), solid((0, 0, 0))]
    labels, probs = det.predict(imgs)
    assert labels == ["Jennifer Aniston", "Dr Dre", "Brad Pitt", NONE_LABEL]
    assert probs.shape == (4, 1)
    np.testing.assert_allclose(probs[:, 0], [0.9, 0.7, 0.6, 0.0])
    assert det.last_top[0] == [("Jennifer Aniston", 0.9), ("Brad Pitt", 0.05)] and det.last_top[3] == []
    # uint8 arrays work too
    labels2, _ = det.predict(np.stack([np.asarray(im) for im in imgs]))
    assert labels2 == labels


def test_gcd_identity_accuracy_rows():
    acc = IdentityAccuracy(GCDDetector(FakeBackend(), NAMES))
    imgs = [solid((255, 0, 0)), solid((0, 255, 0)), solid((0, 0, 255)), solid((0, 0, 0))]
    recs = [
        {"concept": "jennifer aniston"},
        {"concept": "Melania Trump"},
        {"concept": "Brad Pitt"},
        {"concept": "Dr Dre"},
    ]
    rows = acc.evaluate(imgs, recs)
    assert [r["value"] for r in rows] == [1.0, 0.0, 1.0, 0.0]
    assert rows[3]["predicted"] == NONE_LABEL and rows[3]["confidence"] == 0.0
    assert all(r["metric"] == "identity_acc" for r in rows)


# ----------------------------------------------------------------------------- GCD: loading


@pytest.fixture()
def gcd_resources(tmp_path: Path) -> Path:
    res = tmp_path / "resources"
    for f in GCD_FILES:
        (res / f).parent.mkdir(parents=True, exist_ok=True)
        (res / f).write_bytes(b"")
    (res / "face_recognition" / "labels.csv").write_text(
        "Labels,Index\nBrad_Pitt_[m.0c6qh],1\nDr._Dre_[m.01vw20_],2\nJennifer_Aniston_[m.0k6nt],0\n"
    )
    return res


# A stand-in for GCD's `model_training` package with its real class names, constructor arguments and
# return shapes (helpers/labels.py, helpers/face_recognizer.py, preprocessors/face_detection/face_detector.py).
FAKE_GCD = {
    "model_training/__init__.py": "",
    "model_training/helpers/__init__.py": "",
    "model_training/preprocessors/__init__.py": "",
    "model_training/preprocessors/face_detection/__init__.py": "",
    "model_training/helpers/labels.py": """
        import csv, os

        class Label(object):
            def __init__(self, tag_id, internal_id, folder_name):
                self.tag_id, self.internal_id, self.folder_name = tag_id, internal_id, folder_name

            def __repr__(self):
                return self.folder_name

        class Labels(object):
            def __init__(self, resources_path):
                with open(os.path.join(resources_path, 'face_recognition', 'labels.csv')) as f:
                    rows = sorted(list(csv.reader(f))[1:], key=lambda x: x[0])
                self.labels_list = [Label(int(r[1]), i, r[0]) for i, r in enumerate(rows)]
                self.by_model_id = {l.internal_id: l for l in self.labels_list}
    """,
    "model_training/helpers/face_recognizer.py": """
        import os
        import numpy as np

        class FaceRecognizer(object):
            def __init__(self, labels, resources_path, top_n=5, use_cuda=False):
                weights = os.path.join(resources_path, os.getenv("APP_RECOGNITION_WEIGHTS_FILE"))
                assert os.path.isfile(weights), weights
                self.labels, self.top_n = labels, top_n

            def perform(self, face_images):
                if len(face_images) == 0:
                    return []
                for f in face_images:
                    assert np.asarray(f).shape == (224, 224, 3), np.asarray(f).shape
                # labels sorted by name: 0 Brad_Pitt, 1 Dr._Dre, 2 Jennifer_Aniston
                g = int(np.asarray(face_images[0])[..., 1].mean())
                cls = 1 if g > 128 else 2
                other = 0
                return [([(self.labels.by_model_id[cls], 0.8), (self.labels.by_model_id[other], 0.2)], 0.5)]
    """,
    "model_training/preprocessors/face_detection/face_detector.py": """
        import numpy as np

        class FaceDetector(object):
            def __init__(self, data_dir, margin=0.1, use_cuda=False, gpu_memory_fraction=1):
                self.margin = margin

            def perform_single(self, img):
                if img.max() < 10:
                    return []
                h, w = img.shape[:2]
                return [(img[: h // 2, : w // 2, :], np.array([0, 0, w // 2, h // 2, 0.99]))]
    """,
}


@pytest.fixture()
def fake_gcd_package(tmp_path: Path) -> Path:
    root = tmp_path / "fake_gcd"
    for rel, src in FAKE_GCD.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(src))
    return root


def gcd_images() -> list[Image.Image]:
    return [solid((200, 30, 30), 48), solid((30, 200, 30), 48), solid((0, 0, 0), 48)]


def test_gcd_missing_resources_and_package_raise_clear_errors(tmp_path, gcd_resources, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist.*resources.tar.gz"):
        load_gcd_detector({"kind": "gcd", "path": str(tmp_path / "nowhere")})
    (gcd_resources / "face_detection" / "det2.npy").unlink()
    with pytest.raises(FileNotFoundError, match="lacks face_detection/det2.npy"):
        load_gcd_detector({"kind": "gcd", "path": str(gcd_resources)})
    (gcd_resources / "face_detection" / "det2.npy").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "model_training", None)  # not importable here
    with pytest.raises(ImportError, match="celeb-detection-oss.*'python'"):
        load_identity_detector({"detector": {"kind": "gcd", "path": str(gcd_resources)}})
    with pytest.raises(FileNotFoundError, match="detector.python"):
        load_gcd_detector({"kind": "gcd", "path": str(gcd_resources), "python": str(tmp_path / "no-python")})


def test_gcd_subprocess_backend_runs_worker_in_other_interpreter(
    gcd_resources, fake_gcd_package, monkeypatch
):
    monkeypatch.setenv("PYTHONPATH", str(fake_gcd_package))
    monkeypatch.delenv("APP_RECOGNITION_WEIGHTS_FILE", raising=False)
    models = {"detector": {"kind": "gcd", "path": str(gcd_resources), "python": sys.executable}}
    assert identity_metric(models) == "identity_acc"
    evs = get_evaluators(models, label_set={n: [n] for n in NAMES}, names=["identity_acc"])
    assert isinstance(evs["identity_acc"], Evaluator)
    det = evs["identity_acc"].detector
    assert isinstance(det, GCDDetector) and isinstance(det.backend, SubprocessGCD)
    recs = [{"concept": "Jennifer Aniston"}, {"concept": "Dr Dre"}, {"concept": "Dr Dre"}]
    rows = evs["identity_acc"].evaluate(gcd_images(), recs)
    assert [r["predicted"] for r in rows] == ["Jennifer Aniston", "Dr Dre", NONE_LABEL]
    assert [r["value"] for r in rows] == [1.0, 1.0, 0.0]
    assert det.last_top[0] == [("Jennifer Aniston", 0.8), ("Brad Pitt", 0.2)]


def test_gcd_subprocess_failure_names_the_fix(gcd_resources, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    det = load_gcd_detector({"kind": "gcd", "path": str(gcd_resources), "python": sys.executable}, NAMES)
    with pytest.raises(RuntimeError, match="No module named 'model_training'.*|celeb-detection-oss"):
        det.predict(gcd_images())


def test_gcd_in_process_backend(gcd_resources, fake_gcd_package, monkeypatch):
    monkeypatch.syspath_prepend(str(fake_gcd_package))
    for mod in [m for m in sys.modules if m == "model_training" or m.startswith("model_training.")]:
        monkeypatch.delitem(sys.modules, mod)
    try:
        det = load_identity_detector({"detector": {"kind": "gcd", "path": str(gcd_resources)}}, names=NAMES)
        assert isinstance(det, GCDDetector) and isinstance(det.backend, InProcessGCD)
        labels, probs = det.predict(gcd_images())
        assert labels == ["Jennifer Aniston", "Dr Dre", NONE_LABEL]
        np.testing.assert_allclose(probs[:, 0], [0.8, 0.8, 0.0])
    finally:
        for mod in [m for m in sys.modules if m == "model_training" or m.startswith("model_training.")]:
            del sys.modules[mod]


# ----------------------------------------------------------------------------- CLIP zero-shot


@pytest.fixture(scope="module")
def toy_clip():
    from resurgence.models.clip import load_clip

    return load_clip({"kind": "toy", "path": str(TOY_CLIP)})


@pytest.fixture(scope="module")
def toy_world_renders():
    from resurgence.toyworld.concepts import toy_world
    from resurgence.toyworld.data import render_arrays

    world = toy_world(0)
    return world, render_arrays(world, 100, seed=4321, kind="identity")


def test_clip_identifier_on_toy_identity_renders(toy_clip, toy_world_renders):
    world, data = toy_world_renders
    names = [c.name for c in world.identities]
    ident = ClipCelebrityIdentifier(toy_clip, names)
    labels, probs = ident.predict(data["images"])
    assert probs.shape == (100, len(names) + 1) and ident.class_names[-1] == NONE_LABEL
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    truth = [names[i] if i >= 0 else NONE_LABEL for i in data["labels"]]
    acc = float(np.mean([p == t for p, t in zip(labels, truth, strict=True)]))
    assert acc > 0.8, acc  # chance is 1 / (len(names) + 1) < 0.01


def test_clip_identity_metric_is_separate(toy_clip, toy_world_renders):
    world, data = toy_world_renders
    names = [c.name for c in world.identities]
    models = {"clip": {"kind": "toy", "path": str(TOY_CLIP)}, "detector": {"kind": "clip_zero_shot"}}
    assert identity_metric(models) == "identity_acc_clip"
    label_set = {n: [n] for n in names}
    evs = get_evaluators(models, label_set=label_set, names=["identity_acc_clip", "clip_score"])
    ev = evs["identity_acc_clip"]
    assert ev.name == "identity_acc_clip" != "identity_acc"
    assert ev.detector.clip is evs["clip_score"].clip  # one CLIP for both
    recs = [{"concept": names[i]} for i in data["labels"][:20]]
    rows = ev.evaluate([Image.fromarray(a) for a in data["images"][:20]], recs)
    assert {r["metric"] for r in rows} == {"identity_acc_clip", "identity_prob_clip", "identity_rank_clip"}
    by = {
        m: [r["value"] for r in rows if r["metric"] == m] for m in ("identity_acc_clip", "identity_rank_clip")
    }
    assert np.mean(by["identity_acc_clip"]) > 0.7
    # Top-1 exactly where the true identity ranks first (the CLIP zero-shot detector's own columns).
    assert [a == 1.0 for a in by["identity_acc_clip"]] == [k == 1.0 for k in by["identity_rank_clip"]]
    assert "identity_acc_clip" in get_evaluators(models, label_set=label_set)  # default set follows the kind
    with pytest.raises(ValueError, match="identity_acc_clip"):
        get_evaluators(models, label_set=label_set, names=["identity_acc"])
    with pytest.raises(ValueError, match="celebrity names"):
        get_evaluators(models, names=["identity_acc_clip"])


def test_clip_identifier_background_and_spec_options(toy_clip, toy_world_renders):
    world, _ = toy_world_renders
    from resurgence.toyworld.data import render_arrays

    names = [c.name for c in world.identities]
    ident = ClipCelebrityIdentifier(toy_clip, names)
    objs = render_arrays(world, 40, seed=99, kind="object")
    faces = toy_world_renders[1]["images"]
    # The toy CLIP never saw "a person"/"an object" captions, so its background class is weak: since its
    # text tower's tuning to the knowledge geometry it takes ~5% of an object render's probability (was
    # ~14%) and wins on none of them (was ~18%). It must still take far more on objects than on identities.
    bg_objects = float(np.asarray(ident.predict(objs["images"])[1])[:, -1].mean())
    bg_faces = float(np.asarray(ident.predict(faces)[1])[:, -1].mean())
    assert bg_objects > 0.01 and bg_objects > 100 * bg_faces, (bg_objects, bg_faces)
    # Where a background phrase is the best match (objects' own names as background), the answer is none.
    by_name = ClipCelebrityIdentifier(toy_clip, names, background=[c.name for c in world.objects])
    none_objects = np.mean([lab == NONE_LABEL for lab in by_name.predict(objs["images"])[0]])
    none_faces = np.mean([lab == NONE_LABEL for lab in by_name.predict(faces)[0]])
    assert none_objects > 0.9 and none_faces < 0.1, (none_objects, none_faces)
    det = load_identity_detector(
        {"detector": {"kind": "clip_zero_shot", "templates": ["a photo of {}"], "background": ["a person"]}},
        names=names[:5],
        clip=toy_clip,
    )
    assert isinstance(det, ClipCelebrityIdentifier) and det.class_names == [*names[:5], NONE_LABEL]


def test_config_schema_accepts_clip_zero_shot_detector():
    from resurgence.config import load_config

    cfg = load_config([ROOT / "config.yaml"], {"models": {"detector": {"kind": "clip_zero_shot"}}})
    assert cfg["models"]["detector"]["kind"] == "clip_zero_shot"
