"""Rendered (image, mask, caption, label) data of the toy world, as a torch Dataset or numpy arrays.

Item ``i`` of a dataset is a pure function of ``(seed, i)``, so datasets need no storage, workers
need no coordination, and any subset can be re-rendered exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from multiprocessing import get_all_start_methods, get_context
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from resurgence.toyworld.concepts import (
    DEFAULT_MIX,
    CaptionMix,
    ToyWorld,
    toy_world,
)
from resurgence.toyworld.render import RenderSpec, render
from resurgence.world import IDENTITY_TEMPLATES, OBJECT_TEMPLATES

Kind = Literal["t2i", "identity", "object", "all"]
KINDS: tuple[str, ...] = ("t2i", "identity", "object", "all")


def item_spec(
    world: ToyWorld,
    seed: int,
    i: int,
    kind: Kind,
    mix: CaptionMix = DEFAULT_MIX,
    exclude: frozenset[str] = frozenset(),
) -> tuple[str, RenderSpec, int, str, int]:
    """(caption, spec, label, domain, render seed) of item ``i``.

    ``exclude`` (``t2i`` only): concept names no item may show; an item that would is drawn again from
    the same generator, so the rest of the set is the same function of (seed, i) as without it (the
    exact-unlearning control: a model that never saw those concepts).

    ``identity``: a uniform identity in a uniform identity template (label = identity index).
    ``object``: a uniform object in the object template with its name or a synonym (label = object index).
    ``all``: identity or object items, half each. ``t2i``: the text-to-image training mixture; its
    label is set when the caption names exactly one identity or object, else -1.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")
    rng = np.random.default_rng([seed, i])
    if exclude and kind != "t2i":
        raise ValueError(f"exclude applies to the t2i mixture only, not kind {kind!r}")
    if kind == "all":
        kind = "identity" if rng.random() < 0.5 else "object"
    if kind == "identity":
        label = int(rng.integers(len(world.identities)))
        c = world.identities[label]
        caption = IDENTITY_TEMPLATES[rng.integers(len(IDENTITY_TEMPLATES))].format(c.name)
    elif kind == "object":
        label = int(rng.integers(len(world.objects)))
        c = world.objects[label]
        caption = OBJECT_TEMPLATES[0].format(c.names[rng.integers(len(c.names))])
    else:
        caption, spec = world.training_caption(rng, mix)
        while exclude and any(f.name in exclude for f in spec.figures):
            caption, spec = world.training_caption(rng, mix)
        single = len(spec.figures) == 1 and spec.figures[0].name not in world.mapping
        label = world.index(spec.figures[0].name) if single else -1
        if spec.scene is not None:
            domain = "free"  # a free caption (its label is set when it shows a single object)
        elif not single:
            domain = "mapping"
        else:
            domain = world.concept(spec.figures[0].name).domain
        return caption, spec, label, domain, int(rng.integers(2**31))
    render_seed = int(rng.integers(2**31))
    return caption, world.spec_for_prompt(caption, render_seed), label, c.domain, render_seed


class RenderedDataset(Dataset):
    """Toy-world renders; items are dicts of image (3xHxW float in [-1, 1]), mask, caption, label, domain."""

    def __init__(
        self,
        world: ToyWorld,
        n: int,
        seed: int,
        size: int = 64,
        kind: Kind = "t2i",
        mix: CaptionMix = DEFAULT_MIX,
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")
        self.world, self.n, self.seed, self.size, self.kind, self.mix = world, n, seed, size, kind, mix

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        caption, spec, label, domain, rseed = item_spec(self.world, self.seed, i, self.kind, self.mix)
        img, mask = render(spec, rseed, self.size)
        image = torch.from_numpy(img).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return dict(image=image, mask=torch.from_numpy(mask), caption=caption, label=label, domain=domain)


def _render_job(args: tuple[int, int, int, int, int, str, tuple[str, ...]]) -> dict[str, Any]:
    world_seed, start, stop, seed, size, kind, exclude = args
    return _render_range(toy_world(world_seed), start, stop, seed, size, kind, exclude)  # type: ignore[arg-type]


def _render_range(
    world: ToyWorld, start: int, stop: int, seed: int, size: int, kind: Kind, exclude: tuple[str, ...] = ()
) -> dict[str, Any]:
    n = stop - start
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool)
    labels = np.empty(n, np.int64)
    captions: list[str] = []
    domains: list[str] = []
    for j, i in enumerate(range(start, stop)):
        caption, spec, label, domain, rseed = item_spec(world, seed, i, kind, exclude=frozenset(exclude))
        images[j], masks[j] = render(spec, rseed, size)
        labels[j] = label
        captions.append(caption)
        domains.append(domain)
    return dict(images=images, masks=masks, labels=labels, captions=captions, domains=domains)


def render_arrays(
    world: ToyWorld,
    n: int,
    seed: int,
    size: int = 64,
    kind: Kind = "t2i",
    workers: int = 1,
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """Pre-render items ``0..n-1`` of ``RenderedDataset(world, n, seed, size, kind)`` into memory
    (without the concepts in ``exclude``: `item_spec`).

    Returns images (uint8 N,H,W,3), masks (bool N,H,W), labels (int64 N), captions, domains (lists),
    and the seed. Identical output for any ``workers`` (items depend on (seed, i) only).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")
    workers = max(1, min(workers, n // 256 or 1))
    bounds = np.linspace(0, n, workers + 1).astype(int)
    jobs = [
        (world.seed, int(a), int(b), seed, size, kind, tuple(exclude))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    if workers == 1:
        parts = [_render_range(world, 0, n, seed, size, kind, tuple(exclude))]
    else:
        if world is not toy_world(world.seed):
            raise ValueError(
                "workers > 1 needs the cached world toy_world(seed): workers rebuild it from its seed"
            )
        # only the world seed crosses the process boundary: workers rebuild the (cached) world.
        # fork when available: children only run numpy/PIL, and spawn would re-import torch in each.
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        with get_context(method).Pool(workers) as pool:
            parts = pool.map(_render_job, jobs)
    return dict(
        images=np.concatenate([p["images"] for p in parts]),
        masks=np.concatenate([p["masks"] for p in parts]),
        labels=np.concatenate([p["labels"] for p in parts]),
        captions=[c for p in parts for c in p["captions"]],
        domains=[d for p in parts for d in p["domains"]],
        seed=seed,
    )
