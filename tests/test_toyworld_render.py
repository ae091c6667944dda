"""The toy renderer (determinism, masks, styles, prompt parsing) and the rendered datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resurgence.toyworld.concepts import ToyWorld, toy_world
from resurgence.toyworld.data import RenderedDataset, item_spec, render_arrays
from resurgence.toyworld.render import (
    GENERIC_DRAWERS,
    STYLES,
    Figure,
    RenderSpec,
    contact_sheet,
    render,
    render_masks,
    render_prompt,
)

FACE_STYLES = ("portrait", "public_event", "official_photo", "photo")  # styles without a texture pass


@pytest.fixture(scope="module")
def world() -> ToyWorld:
    return toy_world(0)


def face(world: ToyWorld, i: int, style: str = "portrait") -> RenderSpec:
    c = world.identities[i]
    return RenderSpec(style, (Figure(c.name, "face", c.traits),))  # type: ignore[arg-type]


def obj(name: str, style: str = "photo") -> RenderSpec:
    return RenderSpec(style, (Figure(name, "object", (("drawing", name),)),))  # type: ignore[arg-type]


def test_same_seed_same_pixels_different_seed_differs(world: ToyWorld) -> None:
    for spec in (face(world, 3), face(world, 3, "sketch"), obj("cat"), obj("ship", "oil_painting")):
        a, ma = render(spec, 11)
        b, mb = render(spec, 11)
        c, mc = render(spec, 12)
        assert a.dtype == np.uint8 and a.shape == (64, 64, 3) and ma.dtype == bool and ma.shape == (64, 64)
        assert np.array_equal(a, b) and np.array_equal(ma, mb)
        assert not np.array_equal(a, c)
    big, mbig = render(obj("cat"), 0, size=96)
    assert big.shape == (96, 96, 3) and mbig.shape == (96, 96)


def test_every_identity_renders_in_every_style(world: ToyWorld) -> None:
    for i in range(len(world.identities)):
        for style in STYLES:
            img, m = render(face(world, i, style), i)
            assert 40 < m.sum() < 64 * 64 * 0.8, (world.identities[i].name, style)
            assert img.std() > 10


def test_every_object_renders_in_every_style(world: ToyWorld) -> None:
    for name in [c.name for c in world.objects] + list(GENERIC_DRAWERS):
        for style in STYLES:
            img, m = render(obj(name, style), 5)
            assert m.sum() > 30, (name, style)
            assert img.std() > 5


def test_mask_covers_exactly_the_drawn_concept(world: ToyWorld) -> None:
    """With the figure removed (same seed, so same background), only masked pixels change."""
    specs = [face(world, i, s) for i in (0, 50, 120) for s in FACE_STYLES]
    specs += [obj(n) for n in ("airplane", "truck", "rose", "cloud", "tank")]
    for k, spec in enumerate(specs):
        img, m = render(spec, k)
        empty, m0 = render(RenderSpec(spec.style, (), scene=spec.scene), k)
        if spec.style == "photo" and spec.figures[0].kind == "object":
            continue  # object photos pick their background from the object: compared below via scene
        assert not m0.any()
        diff = np.abs(img.astype(int) - empty.astype(int)).sum(-1)
        grown = m.copy()  # antialiased rims lie one pixel outside the mask
        grown[1:] |= m[:-1]
        grown[:-1] |= m[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        assert (diff[~grown] == 0).all(), spec
        assert (diff[m] > 0).mean() > 0.8, spec
    for k, name in enumerate(("airplane", "truck", "rose")):
        spec = RenderSpec("photo", obj(name).figures, scene="street")
        img, m = render(spec, k)
        empty, _ = render(RenderSpec("photo", (), scene="street"), k)
        diff = np.abs(img.astype(int) - empty.astype(int)).sum(-1)
        assert (diff[m] > 0).mean() > 0.8 and (diff[~m] > 0).mean() < 0.1


def test_per_figure_masks_partition_the_union(world: ToyWorld) -> None:
    for k, cap in enumerate(world.free_captions(30, seed=1)):
        spec = world.spec_for_prompt(cap, k)
        img, masks = render_masks(spec, k)
        _, union = render(spec, k)
        assert len(masks) == len(spec.figures)
        assert np.array_equal(np.logical_or.reduce(masks), union)
        assert sum(int(m.sum()) for m in masks) == int(union.sum())  # disjoint
        assert all(m.sum() > 10 for m in masks), cap
    _, (ground,) = render_masks(world.spec_for_prompt("a photo of the ground", 0), 0)
    assert ground.mean() > 0.5  # the ground fills most of the frame


def test_styles_look_like_what_they_say(world: ToyWorld) -> None:
    sk, _ = render(face(world, 7, "sketch"), 0)
    assert np.abs(sk.astype(int) - sk[..., :1]).max() == 0  # grayscale
    pt, _ = render(face(world, 7, "portrait"), 0)
    assert np.abs(pt.astype(int) - pt[..., :1]).max() > 50
    width = {
        s: np.mean([render(face(world, i, s), i)[1].any(0).sum() for i in range(20)]) for s in FACE_STYLES
    }
    assert width["public_event"] < 0.6 * width["portrait"]  # a smaller figure in a crowd
    cx = [np.nonzero(render(face(world, i, "official_photo"), i)[1])[1].mean() for i in range(20)]
    assert abs(np.mean(cx) - 31.5) < 2 and np.std(cx) < 2  # centred head and shoulders
    oil, _ = render(face(world, 7, "oil_painting"), 0)
    assert len(np.unique(oil.reshape(-1, 3), axis=0)) > 50  # brush texture, not flat colours


def _half_means(spec: RenderSpec, n: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = [], []
    for s in range(n):
        img, m = render(spec, s)
        (a if s % 2 == 0 else b).append(img.astype(np.float32) / 255 * m[..., None])
    return np.mean(a, 0).ravel(), np.mean(b, 0).ravel()


def test_distinct_classes_have_distinct_mean_images(world: ToyWorld) -> None:
    """Nearest class-mean (mean masked image) recognises held-out halves: classes are separable."""
    for specs, n, need in (
        ([obj(c.name) for c in world.objects], 20, 0.95),
        ([face(world, i) for i in range(0, len(world.identities), 3)], 6, 0.9),
    ):
        halves = [_half_means(s, n) for s in specs]
        a = np.stack([h[0] for h in halves])
        b = np.stack([h[1] for h in halves])
        d = ((a[:, None] - b[None]) ** 2).sum(-1)
        assert (d.argmin(1) == np.arange(len(specs))).mean() >= need


def test_render_prompt_round_trips_world_prompts(world: ToyWorld) -> None:
    prompts = [
        p
        for c in (world.identities[0], world.identities[77], world.objects[8])
        for p in world.eval_prompts(c)
    ]
    prompts += [p for ph in world.mapping_phrases for p in world.mapping_prompts(ph)]
    prompts += world.free_captions(10, seed=0)
    for k, p in enumerate(prompts):
        img, m = render_prompt(world, p, k)
        spec = world.spec_for_prompt(p, k)
        again, m2 = render(spec, k)
        assert np.array_equal(img, again) and np.array_equal(m, m2)
        assert m.any(), p
    assert world.spec_for_prompt("a photo of the boat", 0).concepts == ("ship",)
    assert world.spec_for_prompt(world.eval_prompts(world.identities[0])[2], 0).style == "sketch"
    with pytest.raises(ValueError, match="a photo of the unicorn"):
        render_prompt(world, "a photo of the unicorn", 0)


def test_contact_sheet_shape(world: ToyWorld) -> None:
    sheet = contact_sheet(world, n_identities=3, size=32, pad=1)
    assert sheet.dtype == np.uint8 and sheet.shape[1] == 6 * 33 and sheet.shape[0] > 3 * 33
    assert (sheet[:32, :32] != 255).any()


def test_dataset_items(world: ToyWorld) -> None:
    ds = RenderedDataset(world, n=40, seed=5, kind="identity")
    assert len(ds) == 40
    item = ds[3]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1.0 and item["image"].max() <= 1.0
    assert item["mask"].dtype == torch.bool and item["mask"].any()
    assert world.identities[item["label"]].name in item["caption"] and item["domain"] == "identity"
    assert torch.equal(ds[3]["image"], item["image"])
    assert not torch.equal(RenderedDataset(world, 40, 6, kind="identity")[3]["image"], item["image"])
    objs = RenderedDataset(world, 30, 0, kind="object")
    for i in range(30):
        it = objs[i]
        assert it["domain"] == "object" and world.concept(it["caption"][len("a photo of the ") :]).name == (
            world.objects[it["label"]].name
        )
    with pytest.raises(IndexError):
        ds[40]
    with pytest.raises(ValueError):
        RenderedDataset(world, 1, 0, kind="faces")  # type: ignore[arg-type]


def test_t2i_labels_and_domains(world: ToyWorld) -> None:
    seen = set()
    for i in range(300):
        cap, spec, label, domain, _ = item_spec(world, 9, i, "t2i")
        seen.add(domain)
        if domain in ("identity", "object"):
            pool = world.identities if domain == "identity" else world.objects
            assert pool[label].name == spec.concepts[0]
        elif domain == "mapping":
            assert label == -1 and spec.concepts[0] in world.mapping_phrases
        else:
            assert spec.scene is not None and (label >= 0) == (len(spec.figures) == 1)
    assert seen == {"identity", "object", "mapping", "free"}


def test_render_arrays_matches_dataset(world: ToyWorld) -> None:
    arr = render_arrays(world, 24, seed=2, size=32, kind="all")
    ds = RenderedDataset(world, 24, seed=2, size=32, kind="all")
    assert arr["images"].shape == (24, 32, 32, 3) and arr["images"].dtype == np.uint8
    assert arr["masks"].shape == (24, 32, 32) and arr["labels"].shape == (24,)
    assert set(arr["domains"]) == {"identity", "object"}
    for i in (0, 7, 23):
        it = ds[i]
        img = torch.from_numpy(arr["images"][i]).permute(2, 0, 1).float() / 127.5 - 1
        assert torch.allclose(img, it["image"]) and it["caption"] == arr["captions"][i]
        assert it["label"] == arr["labels"][i] and np.array_equal(arr["masks"][i], it["mask"].numpy())


def test_render_arrays_is_independent_of_workers(world: ToyWorld) -> None:
    a = render_arrays(world, 512, seed=4, size=16, kind="t2i", workers=2)
    b = render_arrays(world, 512, seed=4, size=16, kind="t2i", workers=1)
    assert np.array_equal(a["images"], b["images"]) and a["captions"] == b["captions"]
    assert np.array_equal(a["masks"], b["masks"]) and a["domains"] == b["domains"]
    with pytest.raises(ValueError, match="cached world"):
        render_arrays(ToyWorld(0), 512, seed=4, size=16, workers=2)


def test_an_excluded_identity_is_in_no_training_item_and_the_others_are_unchanged():
    from resurgence.toyworld.concepts import toy_world
    from resurgence.toyworld.data import item_spec

    world = toy_world(0)
    gone = frozenset(c.name for c in world.identities[:40])
    shown, redrawn = set(), 0
    for i in range(400):
        plain = item_spec(world, 7, i, "t2i")
        kept = item_spec(world, 7, i, "t2i", exclude=gone)
        names = {f.name for f in kept[1].figures}
        assert not names & gone, kept[0]
        if {f.name for f in plain[1].figures} & gone:
            redrawn += 1
            shown |= {f.name for f in plain[1].figures} & gone
        else:
            assert kept[0] == plain[0] and kept[4] == plain[4]  # same caption and render seed
    assert redrawn > 20 and len(shown) > 10  # the exclusion had something to remove
    with pytest.raises(ValueError, match="t2i mixture only"):
        item_spec(world, 7, 0, "identity", exclude=gone)
