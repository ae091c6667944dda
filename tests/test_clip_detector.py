"""Toy CLIP, identity detector and segmenter: training on tiny fake renders, save/load, sizes."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from resurgence.toyworld import clip as toyclip
from resurgence.toyworld import detector as det
from resurgence.world import Concept

# ----------------------------------------------------------------------------- a tiny fake world

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 80, 230), (230, 210, 40), (200, 60, 200), (40, 210, 210)]


class FakeWorld:
    def __init__(self) -> None:
        self.identities = [Concept(n, "identity") for n in ("alice smith", "bob jones", "carla diaz")]
        self.objects = [
            Concept("truck", "object", ("lorry",)),
            Concept("ship", "object", ("boat",)),
            Concept("bird", "object"),
        ]

    def eval_prompts(self, c: Concept) -> list[str]:
        if c.domain == "identity":
            return [f"A portrait of {c.name}", f"A sketch of {c.name}"]
        return [f"a photo of the {n}" for n in c.names]


def fake_render_arrays(world, n, seed=0, size=16, kind="all", workers=1):
    """Coloured squares: identities and objects have their own colour; "t2i" adds grey generic people."""
    rng = np.random.default_rng(seed)
    images = np.full((n, size, size, 3), 128, np.uint8)
    masks = np.zeros((n, size, size), bool)
    labels, captions, domains = [], [], []
    for i in range(n):
        dom = kind if kind in ("identity", "object") else str(rng.choice(["identity", "object", "mapping"]))
        s = size // 2
        y, x = rng.integers(0, size - s, 2)
        masks[i, y : y + s, x : x + s] = True
        if dom == "mapping" and kind == "t2i":
            images[i, y : y + s, x : x + s] = (70, 70, 70)
            labels.append(-1), captions.append("a photo of a person"), domains.append("mapping")
            continue
        dom = "identity" if dom == "mapping" else dom
        k = int(rng.integers(0, 3))
        images[i, y : y + s, x : x + s] = COLOURS[k + (0 if dom == "identity" else 3)]
        c = (world.identities if dom == "identity" else world.objects)[k]
        labels.append(k), captions.append(f"a photo of {c.name}"), domains.append(dom)
    return {
        "images": images,
        "masks": masks,
        "labels": np.array(labels),
        "captions": captions,
        "domains": domains,
    }


TINY_CLIP = dict(
    image_size=16,
    patch_size=4,
    vision_width=32,
    vision_layers=1,
    vision_head_width=16,
    text_width=16,
    text_heads=2,
    text_layers=1,
    embed_dim=16,
    context_length=16,
    n_train=256,
    n_val_objects=48,
    n_val_identities=48,
    batch_size=64,
    lr=3e-3,
    warmup=5,
    render_workers=1,
    text_calibration={"steps": 0},  # the contrastive training alone; the tuning has tests of its own
)


@pytest.fixture(autouse=True)
def _few_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- toy CLIP


def test_default_toy_clip_is_small_and_open_clip_compatible():
    cfg = toyclip.ToyClipTrainConfig()
    model = toyclip.build_toy_clip(cfg)
    n_bytes = sum(p.numel() for p in model.state_dict().values()) * 2  # saved as fp16
    assert n_bytes < 8e6
    assert model.visual.image_size == (64, 64)
    tok = open_clip.tokenize(["a photo of the truck"], context_length=cfg.context_length)
    assert model.encode_text(tok).shape == (1, cfg.embed_dim)


def test_caption_slots_teach_synonyms_and_keep_unlabelled_captions():
    world = FakeWorld()
    data = {
        "captions": ["a photo of truck", "a photo of a person"],
        "labels": np.array([0, -1]),
        "domains": ["object", "mapping"],
    }
    slots = toyclip.build_caption_slots(world, data, n_variants=200, p_variant=1.0, seed=0)
    assert slots[0][0] == "a photo of truck"
    assert any("lorry" in c for c in slots[0]) and any("truck" in c for c in slots[0][1:])
    assert all(c == "a photo of a person" for c in slots[1])


def test_multi_positive_loss_is_clip_loss_for_unique_captions_and_pools_duplicates():
    F = torch.nn.functional
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    logits = 10 * img @ txt.T
    plain = 0.5 * (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5)))
    loss = toyclip.multi_positive_clip_loss(img, txt, torch.arange(5), torch.tensor(10.0))
    assert torch.allclose(loss, plain, atol=1e-6)
    # two images share one caption: matching both to it is optimal, a stray duplicate costs
    t = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    ids = torch.tensor([7, 7, 3])
    aligned = toyclip.multi_positive_clip_loss(t, t, ids, torch.tensor(50.0))
    stray = toyclip.multi_positive_clip_loss(
        F.normalize(torch.tensor([[1.0, 0.0], [0.7, 0.7], [0.0, 1.0]]), dim=-1), t, ids, torch.tensor(50.0)
    )
    assert float(aligned) < float(stray)


def test_train_clip_learns_fake_world_and_saves_local_dir_layout(tmp_path):
    world = FakeWorld()
    cfg = toyclip.ToyClipTrainConfig(**TINY_CLIP, steps=60)
    metrics = toyclip.train_clip(cfg, world, tmp_path, "cpu", render_fn=fake_render_arrays)
    out = tmp_path / "clip"
    assert (out / "open_clip_config.json").is_file() and (out / "open_clip_model.safetensors").is_file()
    assert not (tmp_path / "clip_ckpt").exists()
    assert metrics["object_zero_shot_top1"] >= 0.9 and metrics["identity_zero_shot_top1"] >= 0.9
    assert json.loads((out / "metrics.json").read_text())["seed"] == 0
    # open_clip itself reads the folder
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    assert tokenizer(["a photo of the boat"]).shape == (1, cfg.context_length)
    x = preprocess(Image.new("RGB", (40, 40), COLOURS[4])).unsqueeze(0)
    assert x.shape == (1, 3, 16, 16)
    with torch.no_grad():
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(
            tokenizer([f"a photo of the {n}" for n in ("truck", "boat", "bird")]), normalize=True
        )
    assert int((img @ txt.T).argmax()) == 1  # the ship colour matches its synonym "boat"


def test_text_calibration_fits_the_names_geometry_and_leaves_the_image_tower(tmp_path):
    """Locked-image text tuning of a trained CLIP: the names' Gram loss falls, the image tower and the
    temperature keep their saved bytes, the text tower moves, and the training's metrics are kept."""
    import dataclasses

    from safetensors.torch import load_file

    world = FakeWorld()
    cfg = toyclip.ToyClipTrainConfig(**TINY_CLIP, steps=60)
    toyclip.train_clip(cfg, world, tmp_path, "cpu", render_fn=fake_render_arrays)
    weights = tmp_path / "clip" / "open_clip_model.safetensors"
    before = load_file(weights)
    tc = toyclip.TextCalibrationConfig(steps=40, warmup=2, knowledge_weight=100.0)
    metrics = toyclip.calibrate_trained_clip(
        dataclasses.replace(cfg, text_calibration=tc), world, tmp_path, "cpu", render_fn=fake_render_arrays
    )
    after = load_file(weights)
    cal = metrics["text_calibration"]
    assert cal["final_knowledge_loss"] < 0.5 * cal["knowledge_loss_before"]
    frozen = [k for k in before if k.startswith("visual.") or k == "logit_scale"]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in frozen)
    assert metrics["seed"] == 0 and metrics["n_train"] == cfg.n_train  # the training's metrics, kept
    assert metrics["config"]["text_calibration"]["steps"] == 40
    assert json.loads((tmp_path / "clip" / "metrics.json").read_text())["text_calibration"] == cal
    assert metrics["object_zero_shot_top1"] >= 0.9 and metrics["identity_zero_shot_top1"] >= 0.9


def test_training_ends_with_the_text_tuning_where_its_config_asks(tmp_path):
    """`TextCalibrationConfig.steps` > 0 (the default) tunes the text tower at the end of `train_clip`;
    0 leaves the contrastively trained CLIP as it is."""
    world = FakeWorld()
    for steps in (0, 3):
        cfg = toyclip.ToyClipTrainConfig(**{**TINY_CLIP, "steps": 4, "text_calibration": {"steps": steps}})
        metrics = toyclip.train_clip(cfg, world, tmp_path / str(steps), "cpu", render_fn=fake_render_arrays)
        saved = json.loads((tmp_path / str(steps) / "clip" / "metrics.json").read_text())
        if steps:
            assert metrics["text_calibration"]["config"]["steps"] == 3
            assert saved["text_calibration"] == metrics["text_calibration"]
        else:
            assert "text_calibration" not in metrics and "text_calibration" not in saved
    assert toyclip.TextCalibrationConfig().steps > 0


def test_text_calibration_settings_name_bad_values():
    with pytest.raises(ValueError, match="text_calibration.knowledge_balance: allowed values"):
        toyclip.TextCalibrationConfig(knowledge_balance="objects")
    with pytest.raises(ValueError, match="text_calibration.steps"):
        toyclip.TextCalibrationConfig(steps=-1)
    cfg = toyclip.ToyClipTrainConfig(text_calibration={"steps": 5})  # as a manifest's config holds it
    assert cfg.text_calibration == toyclip.TextCalibrationConfig(steps=5)


def test_train_clip_resumes_from_checkpoint(tmp_path, monkeypatch):
    world = FakeWorld()
    cfg = toyclip.ToyClipTrainConfig(
        **{**TINY_CLIP, "n_train": 64, "batch_size": 32}, steps=12, checkpoint_every=5
    )
    real_save = toyclip.save_train_state

    def save_then_crash(path, state):
        real_save(path, state)
        raise KeyboardInterrupt("simulated preemption")

    monkeypatch.setattr(toyclip, "save_train_state", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        toyclip.train_clip(cfg, world, tmp_path, "cpu", render_fn=fake_render_arrays)
    assert (tmp_path / "clip_ckpt" / "state.pt").is_file() and not (tmp_path / "clip").exists()
    monkeypatch.setattr(toyclip, "save_train_state", real_save)
    metrics = toyclip.train_clip(cfg, world, tmp_path, "cpu", render_fn=fake_render_arrays)
    assert metrics["resumed_from_step"] == 5
    assert (tmp_path / "clip" / "open_clip_model.safetensors").is_file()


# ----------------------------------------------------------------------------- augmentation


def test_augment_moves_masks_with_images_and_stays_in_range():
    x = torch.zeros(8, 3, 32, 32)
    x[:, :, 8:20, 10:22] = 1.0
    m = (x[:, :1] > 0.5).float()
    cfg = det.AugmentConfig(
        p=1.0, max_shift=0.15, blur_sigma=(0, 0), noise_std=(0, 0), brightness=0, contrast=0, saturation=0
    )
    gen = torch.Generator().manual_seed(0)
    y, ym = det.augment_batch(x, gen, cfg, masks=m)
    assert y.shape == x.shape and ym.shape == m.shape
    assert not torch.equal(ym, m)  # something moved
    agree = ((y[:, :1] > 0.5) == (ym > 0.5)).float().mean()
    assert agree > 0.97
    z, _ = det.augment_batch(x, gen, det.AugmentConfig(p=1.0))
    assert float(z.min()) >= 0 and float(z.max()) <= 1


# ----------------------------------------------------------------------------- detector


def test_detector_default_size_under_4mb():
    net = det.DetectorNet(140 + 1, det.DetectorTrainConfig().channels)
    assert det.model_bytes(net.state_dict()) < 4e6


def test_detector_targets_send_everything_unnamed_to_none():
    data = {
        "labels": np.array([2, -1, 1, 0, 0]),
        "domains": ["identity", "mapping", "object", "free", "identity"],
    }
    assert det.detector_targets(data, n_identities=3).tolist() == [2, 3, 3, 3, 0]


def test_train_detector_recognises_identities_and_abstains_on_generic_people(tmp_path):
    world = FakeWorld()
    cfg = det.DetectorTrainConfig(
        image_size=16, n_identity=240, n_other=240, n_val=160, channels=(8, 16), steps=80, batch_size=64,
        lr=3e-3, warmup=5, render_workers=1, checkpoint_every=1000,
    )  # fmt: skip
    metrics = det.train_detector(cfg, world, tmp_path, "cpu", render_fn=fake_render_arrays)
    assert metrics["identity_top1"] >= 0.95 and metrics["none_recall"] >= 0.9
    detector = det.IdentityDetector.load(tmp_path / "detector")
    assert detector.class_names == ["alice smith", "bob jones", "carla diaz", det.NONE_LABEL]
    data = fake_render_arrays(world, 24, seed=99, size=16, kind="t2i")
    labels, probs = detector.predict(data["images"])
    labels_pil, probs_pil = detector.predict([Image.fromarray(im) for im in data["images"]])
    assert labels == labels_pil and np.allclose(probs, probs_pil, atol=1e-5)
    assert probs.shape == (24, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    truth = [
        world.identities[k].name if d == "identity" else det.NONE_LABEL
        for k, d in zip(data["labels"], data["domains"], strict=True)
    ]
    assert np.mean([a == b for a, b in zip(labels, truth, strict=True)]) >= 0.9
    # larger inputs (diffusion samples at another resolution) are resized, not rejected
    big = np.repeat(np.repeat(data["images"][:4], 2, axis=1), 2, axis=2)
    assert detector.predict(big)[0] == labels[:4]


# ----------------------------------------------------------------------------- segmenter


def test_train_segmenter_predicts_foreground(tmp_path):
    world = FakeWorld()
    cfg = det.SegmenterTrainConfig(
        image_size=16, n_train=240, n_val=64, channels=(8, 16), steps=80, batch_size=32, lr=5e-3, warmup=5,
        render_workers=1,
    )  # fmt: skip
    metrics = det.train_segmenter(cfg, world, tmp_path, "cpu", render_fn=fake_render_arrays)
    assert metrics["mean_iou"] > 0.6
    seg = det.ToySegmenterModel.load(tmp_path / "segmenter")
    data = fake_render_arrays(world, 6, seed=5, size=16)
    masks = seg.predict(data["images"])
    assert masks.dtype == bool and masks.shape == (6, 16, 16)
    assert det.mask_iou(masks, data["masks"]).mean() > 0.6


def test_mask_iou_counts_empty_pairs_as_perfect():
    a = np.zeros((2, 4, 4), bool)
    b = a.copy()
    b[1, :2] = True
    a[1, :1] = True
    assert det.mask_iou(a, b).tolist() == [1.0, 0.5]


def test_the_knowledge_loss_gives_the_names_the_worlds_geometry(tmp_path):
    """With the Gram loss the trained names' cosines approach the knowledge targets; without it they do not."""
    from resurgence.models.clip import load_clip
    from resurgence.toyworld.geometry import knowledge_gram
    from resurgence.toyworld.knowledge import KnowledgeConfig

    world = FakeWorld()
    knowledge = KnowledgeConfig(shared=0.8)
    names, gram = knowledge_gram(world, knowledge)
    off = ~torch.eye(len(names), dtype=torch.bool)
    errors = {}
    for weight, balance in ((0.0, "pairs"), (1.0, "pairs"), (1.0, "domains")):
        cfg = toyclip.ToyClipTrainConfig(
            **TINY_CLIP, steps=60, knowledge=knowledge, knowledge_weight=weight, knowledge_balance=balance
        )
        out = tmp_path / f"{weight}_{balance}"
        toyclip.train_clip(cfg, world, out, "cpu", render_fn=fake_render_arrays)
        clip = load_clip({"kind": "toy", "path": str(out / "clip")})
        with torch.no_grad():
            sim = clip.similarity(names, names).float()
        errors[weight, balance] = float((sim - gram)[off].abs().mean())
    assert errors[1.0, "pairs"] < 0.1 < errors[0.0, "pairs"], errors
    assert errors[1.0, "domains"] < 0.1, errors  # the per-domain average fits the geometry as well
