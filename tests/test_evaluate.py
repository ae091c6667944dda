"""ClipModel wrapper, evaluators (identity/CLIP accuracy, CLIP score) and FID."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from resurgence.evaluate import fid as fidmod
from resurgence.evaluate.base import Evaluator, same_concept
from resurgence.evaluate.clip_metrics import ClipAccuracy, ClipScore
from resurgence.evaluate.identity import IdentityAccuracy
from resurgence.evaluate.registry import get_evaluators
from resurgence.models.clip import ClipModel, load_clip
from resurgence.toyworld.clip import ToyClipTrainConfig, build_toy_clip, save_toy_clip
from resurgence.toyworld.detector import NONE_LABEL, DetectorNet, IdentityDetector

TINY = ToyClipTrainConfig(
    image_size=16, patch_size=4, vision_width=32, vision_layers=1, vision_head_width=16, text_width=16,
    text_heads=2, text_layers=1, embed_dim=8, context_length=16,
)  # fmt: skip


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("toyclip") / "clip"
    save_toy_clip(build_toy_clip(TINY), TINY, path)
    return path


@pytest.fixture(scope="module")
def clip(toy_dir):
    return load_clip({"kind": "toy", "path": str(toy_dir)})


def images(n: int, size: int = 16, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


# ----------------------------------------------------------------------------- ClipModel


def test_toy_clip_roundtrip_and_normalised_embeddings(toy_dir, clip):
    ims = images(3)
    emb = clip.encode_images(ims)
    txt = clip.encode_texts(["a photo of the truck", "a sketch of bob"])
    assert emb.shape == (3, 8) and txt.shape == (2, 8) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)
    # the batched tensor path (FID, GPU evaluation) agrees with open_clip's own preprocessing
    x = torch.from_numpy(np.stack([np.asarray(i) for i in ims])).permute(0, 3, 1, 2)
    assert torch.allclose(clip.encode_image_tensor(x), emb, atol=1e-4)
    # uint8 arrays are accepted like PIL lists
    assert torch.allclose(clip.encode_images(np.stack([np.asarray(i) for i in ims])), emb, atol=1e-6)


def test_similarity_is_cosine(clip):
    s = clip.similarity(["a cat", "a dog"], ["a cat", "a ship", "a dog"])
    assert s.shape == (2, 3)
    assert s[0, 0] == pytest.approx(1.0, abs=1e-5) and s[1, 2] == pytest.approx(1.0, abs=1e-5)


def test_zero_shot_ensembles_prompts_per_label(clip):
    prompts = {"ship": ["a photo of the ship", "a photo of the boat"], "truck": ["a photo of the truck"]}
    ims = images(4, seed=1)
    pred = clip.zero_shot(ims, prompts)
    t = clip.encode_texts(["a photo of the ship", "a photo of the boat", "a photo of the truck"])
    lab = torch.stack([F.normalize(t[:2].mean(0), dim=-1), t[2]])
    manual = (clip.encode_images(ims) @ lab.T).argmax(1)
    assert pred == [["ship", "truck"][i] for i in manual.tolist()]


def test_load_clip_errors_name_model_and_how_to_get_weights(tmp_path):
    with pytest.raises(RuntimeError, match="ViT-L-14.*cache_dir"):
        load_clip({"kind": "open_clip", "model": "ViT-L-14", "pretrained": str(tmp_path / "missing.bin")})
    with pytest.raises(RuntimeError, match="ViT-B-32"):  # offline tag: fails fast, no download retries
        load_clip(
            {"kind": "open_clip", "model": "ViT-B-32", "pretrained": "openai", "cache_dir": str(tmp_path)}
        )
    with pytest.raises(FileNotFoundError):
        load_clip({"kind": "toy", "path": str(tmp_path)})


def _real_arch_clip(name: str) -> ClipModel:
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    return ClipModel(model, preprocess, open_clip.get_tokenizer(name), name=name)


def test_real_architecture_path_vit_b32_random_weights():
    torch.manual_seed(0)
    clip = _real_arch_clip("ViT-B-32")
    assert clip.image_size == 224 and clip.embed_dim == 512
    emb = clip.encode_images(images(2, size=64))
    txt = clip.encode_texts(["A portrait of Jennifer Aniston"])
    assert emb.shape == (2, 512) and txt.shape == (1, 512) and emb.dtype == torch.float32
    assert clip.zero_shot(images(1, size=64), {"a": ["a photo of the a"], "b": ["a photo of the b"]})[0] in {
        "a",
        "b",
    }


@pytest.mark.slow
def test_real_architecture_path_vit_l14_random_weights():
    clip = _real_arch_clip("ViT-L-14")
    assert clip.embed_dim == 768
    assert clip.encode_images(images(1, size=64)).shape == (1, 768)
    assert clip.encode_texts(["a photo of the ship"]).shape == (1, 768)


# ----------------------------------------------------------------------------- evaluators


class StubClip(ClipModel):
    """Embeddings by construction: texts by keyword, images by dominant colour channel."""

    AXES = {"ship": 0, "boat": 0, "truck": 1, "lorry": 1, "bird": 2}
    logit_scale = 10.0

    def __init__(self) -> None:
        pass

    def encode_texts(self, texts, batch_size=256):
        out = torch.zeros(len(texts), 3)
        for i, t in enumerate(texts):
            for word, axis in self.AXES.items():
                if word in t:
                    out[i, axis] = 1.0
            if "opposite" in t:
                out[i] = -torch.tensor([1.0, 0.0, 0.0])
        return F.normalize(out, dim=-1)

    def encode_images(self, images, batch_size=64):
        arr = np.stack([np.asarray(i, dtype=np.float32).mean((0, 1)) for i in images])
        return F.normalize(torch.from_numpy(arr), dim=-1)


def solid(rgb) -> Image.Image:
    return Image.new("RGB", (8, 8), rgb)


def test_clip_accuracy_counts_synonym_generations_for_the_label():
    acc = ClipAccuracy(StubClip(), {"ship": ["ship", "boat"], "truck": ["truck", "lorry"], "bird": ["bird"]})
    assert acc.label_prompts["ship"] == ["a photo of the ship", "a photo of the boat"]
    records = [
        {"concept": "ship", "prompt": "a photo of the boat", "seed": 0},
        {"concept": "ship", "prompt": "a photo of the ship", "seed": 1},
        {"concept": "Truck", "prompt": "a photo of the lorry", "seed": 2},
    ]
    out = acc.evaluate([solid((255, 0, 0)), solid((0, 0, 255)), solid((0, 255, 0))], records)
    rows = [r for r in out if r["metric"] == "clip_acc"]
    assert [r["value"] for r in rows] == [1.0, 0.0, 1.0]
    assert [r["predicted"] for r in rows] == ["ship", "bird", "truck"]
    assert all(r["seed"] == rec["seed"] for r, rec in zip(rows, records, strict=True))
    # Presence: image 2 is pure blue (bird's axis); its true label ship has cosine 0 against bird's 1.
    e = np.exp(10.0)
    prob = {r["seed"]: r["value"] for r in out if r["metric"] == "clip_prob"}
    rank = {r["seed"]: r["value"] for r in out if r["metric"] == "clip_rank"}
    assert prob[0] == pytest.approx(e / (e + 2)) and prob[1] == pytest.approx(1 / (e + 2))
    assert rank == {0: 1.0, 1: 2.0, 2: 1.0}  # ship ties truck below bird: rank counts strictly higher


def test_clip_score_is_100_times_clamped_cosine():
    rows = ClipScore(StubClip()).evaluate(
        [solid((255, 0, 0))] * 3,
        [{"prompt": "a ship"}, {"prompt": "a truck"}, {"prompt": "the opposite"}],
    )
    assert [round(r["value"], 4) for r in rows] == [100.0, 0.0, 0.0]
    assert rows[0]["metric"] == "clip_score" and rows[0]["predicted"] is None


class StubDetector:
    def predict(self, images):
        names = ["alice", NONE_LABEL, "bob"]
        probs = np.eye(3, dtype=np.float32)[[0, 1, 2][: len(images)]]
        return names[: len(images)], probs


def test_identity_accuracy_scores_top1_and_abstention_as_miss():
    ev = IdentityAccuracy(StubDetector())
    assert isinstance(ev, Evaluator)
    rows = ev.evaluate(
        [solid((0, 0, 0))] * 3, [{"concept": "Alice"}, {"concept": "bob"}, {"concept": "carl"}]
    )
    assert [r["value"] for r in rows] == [1.0, 0.0, 0.0]
    assert [r["predicted"] for r in rows] == ["alice", NONE_LABEL, "bob"]
    assert rows[0]["confidence"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ev.evaluate([solid((0, 0, 0))], [])
    with pytest.raises(KeyError):
        ev.evaluate([solid((0, 0, 0))], [{"prompt": "x"}])


class StubScoringDetector(StubDetector):
    """A detector that scores every class (as the toy detector does)."""

    class_names = ["alice", "bob", NONE_LABEL]

    def predict(self, images):
        probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4], [0.3, 0.3, 0.4]], dtype=np.float32)[: len(images)]
        return [self.class_names[i] for i in probs.argmax(1)], probs


def test_identity_presence_is_the_true_identitys_probability_and_rank():
    rows = IdentityAccuracy(StubScoringDetector()).evaluate(
        [solid((0, 0, 0))] * 3, [{"concept": "Alice"}, {"concept": "bob"}, {"concept": "carl"}]
    )
    by = {
        m: [r["value"] for r in rows if r["metric"] == m]
        for m in ("identity_acc", "identity_prob", "identity_rank")
    }
    assert by["identity_acc"] == [1.0, 0.0, 0.0]
    assert by["identity_prob"][:2] == pytest.approx([0.7, 0.1]) and np.isnan(by["identity_prob"][2])
    assert by["identity_rank"][:2] == [1.0, 3.0] and np.isnan(by["identity_rank"][2])  # carl: no such class
    assert [r["predicted"] for r in rows if r["metric"] == "identity_prob"] == ["alice", "alice", NONE_LABEL]


def test_same_concept_ignores_case_and_spacing():
    assert same_concept("Jennifer  Aniston", "jennifer aniston") and not same_concept(None, "x")


def test_registry_builds_toy_evaluators_from_model_specs(toy_dir, tmp_path):
    IdentityDetector(DetectorNet(3, (4, 8)), ["alice", "bob", NONE_LABEL], 16).save(tmp_path / "detector")
    models = {
        "clip": {"kind": "toy", "path": str(toy_dir)},
        "detector": {"kind": "toy", "path": str(tmp_path / "detector")},
    }
    evs = get_evaluators(models, label_set={"ship": ["ship", "boat"], "truck": ["truck"]})
    assert set(evs) == {"identity_acc", "clip_acc", "clip_score"}
    assert all(isinstance(e, Evaluator) and e.name == k for k, e in evs.items())
    rows = evs["identity_acc"].evaluate(images(2), [{"concept": "alice"}, {"concept": "bob"}])
    assert {r["predicted"] for r in rows} <= {"alice", "bob", NONE_LABEL}
    assert set(get_evaluators(models, names=["clip_score"])) == {"clip_score"}
    with pytest.raises(ValueError, match="label_set"):
        get_evaluators(models, names=["clip_acc"])
    with pytest.raises(ValueError, match="unknown"):
        get_evaluators(models, names=["nope"])


# ----------------------------------------------------------------------------- FID


def reference_fid(fa: np.ndarray, fb: np.ndarray) -> float:
    """Textbook Fréchet distance with scipy's matrix square root (independent of torch-fidelity)."""
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    sa, sb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    covmean = scipy.linalg.sqrtm(sa @ sb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean))


def test_clip_fid_matches_reference_and_is_zero_for_identical_sets(clip):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) // 2 + rng.integers(0, 60, a.shape), 0, 255).astype(np.uint8)
    fa, fb = fidmod.clip_features(clip, a), fidmod.clip_features(clip, b)
    got = fidmod.frechet_distance(a, b, "clip", clip=clip, batch_size=16)
    assert got == pytest.approx(reference_fid(fa, fb), rel=1e-3, abs=1e-6)
    assert got > 1e-3
    same = fidmod.frechet_distance([Image.fromarray(x) for x in a], a, "clip", clip=clip)
    assert abs(same) < 1e-6 * max(1.0, got)


def test_fid_argument_errors(clip, monkeypatch, tmp_path):
    a = np.zeros((3, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError):
        fidmod.frechet_distance(a, a, "clip")
    with pytest.raises(ValueError):
        fidmod.frechet_distance(a[:1], a, "clip", clip=clip)
    monkeypatch.setattr(fidmod, "INCEPTION_CACHE", tmp_path / "absent.pth")
    with pytest.raises(RuntimeError, match="Inception"):
        fidmod.frechet_distance(a, a, "inception")


def test_fid_evaluator_is_the_set_distance_in_one_row(toy_dir, clip):
    """FID as an evaluator (the registry builds it with the base model's caption images as reference): one
    row per image set, the same value as `frechet_distance` with the world's CLIP features."""
    rng = np.random.default_rng(1)
    a = [Image.fromarray(x) for x in rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)]
    b = [Image.fromarray(x) for x in rng.integers(0, 128, (12, 16, 16, 3), dtype=np.uint8)]
    models = {"clip": {"kind": "toy", "path": str(toy_dir)}}
    ev = get_evaluators(models, names=["fid"], reference=b)["fid"]
    assert isinstance(ev, Evaluator) and ev.name == "fid"
    records = [{"role": "caption", "prompt": f"p{i}", "seed": 1000 + i} for i in range(len(a))]
    (row,) = ev.evaluate(a, records)
    assert row["metric"] == "fid" and row["seed"] == 1000 and row["role"] == "caption"
    assert row["value"] == pytest.approx(fidmod.frechet_distance(a, b, "clip", clip=clip), rel=1e-6)
    with pytest.raises(ValueError, match="reference"):
        get_evaluators(models, names=["fid"])
