"""The toy world's quality gates: is the miniature faithful enough for the study to mean anything?

Gates (issue: toy world): identity detector top-1 on held-out renders >= 99%; toy CLIP
zero-shot top-1 on held-out rendered objects over the full object label set >= 95%; the base
text-to-image model's own generations classified correctly >= 90% (identities: all five
templates, by the detector; objects: by the toy CLIP); and generation speed on this machine.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import numpy as np
import torch

from resurgence.io import write_json
from resurgence.phases import LOAD, SCORE, WRITE, phase

GATES = {
    "detector_top1": 0.99,
    "clip_zero_shot_top1": 0.95,
    "t2i_identity_top1": 0.90,
    "t2i_object_top1": 0.90,
}
HELD_OUT_SEED = 10_000_019  # far from every training seed; renders are a pure function of (seed, index)


def measure_quality(
    models: dict[str, Any],
    generation: dict[str, Any],
    out: str | os.PathLike,
    seed: int = 0,
    images: int = 4,
    n_renders: int = 2000,
    device: str = "cpu",
    concepts: int | None = None,
) -> dict[str, Any]:
    """Measure every gate and write ``out`` (JSON). ``images`` = generations per prompt; ``concepts``: the
    text-to-image gates prompt only the first that many identities and objects (None: every one), for
    presets whose worlds are too small to pass the gates anyway (the smoke preset)."""
    from resurgence.generate.engine import GenerationConfig, generate
    from resurgence.models.clip import load_clip
    from resurgence.models.pipeline import load_pipeline
    from resurgence.toyworld.concepts import toy_world
    from resurgence.toyworld.data import render_arrays
    from resurgence.toyworld.detector import IdentityDetector

    world = toy_world(seed)
    with phase(LOAD):
        detector = IdentityDetector.load(models["detector"]["path"], device=device)
    clip = load_clip(models["clip"], device=device)
    labels = {c.name: list(c.names) for c in world.objects}
    prompts_of = {name: [f"a photo of the {p}" for p in phrases] for name, phrases in labels.items()}
    result: dict[str, Any] = {"host": platform.node(), "device": str(device), "seed": seed}

    with phase(SCORE):  # the held-out renders are drawn for these gates alone
        ids = render_arrays(world, n_renders, seed=HELD_OUT_SEED, size=64, kind="identity")
        pred, _ = detector.predict(ids["images"])
        truth = [world.identities[i].name for i in ids["labels"]]
        result["detector_top1"] = float(np.mean([p == t for p, t in zip(pred, truth, strict=True)]))

        objs = render_arrays(world, n_renders, seed=HELD_OUT_SEED + 1, size=64, kind="object")
        pred = clip.zero_shot(objs["images"], prompts_of)
        truth = [world.objects[i].name for i in objs["labels"]]
        result["clip_zero_shot_top1"] = float(np.mean([p == t for p, t in zip(pred, truth, strict=True)]))

    pipe = load_pipeline(models["pipeline"], device=device)
    gen_cfg = GenerationConfig(**generation)
    id_prompts = [(c.name, p, t) for c in world.identities[:concepts] for t, p in world.eval_templates(c)]
    obj_prompts = [(c.name, p, t) for c in world.objects[:concepts] for t, p in world.eval_templates(c)]
    per = {}
    generation_s = 0.0  # sampling alone, the scoring of the images not counted
    n_generated = 0
    for key, items in (("identity", id_prompts), ("object", obj_prompts)):
        recs = [(c, p, t, s) for c, p, t in items for s in range(images)]
        t0 = time.perf_counter()
        imgs = generate(pipe, [r[1] for r in recs], [1000 + r[3] for r in recs], gen_cfg, device=device)
        generation_s += time.perf_counter() - t0
        n_generated += len(imgs)
        with phase(SCORE):
            if key == "identity":
                pred, _ = detector.predict(imgs)
            else:
                pred = clip.zero_shot(imgs, prompts_of)
        correct = [p == r[0] for r, p in zip(recs, pred, strict=True)]
        per[key] = float(np.mean(correct))
        by_template: dict[str, list[bool]] = {}
        for (c, p, t, _), ok in zip(recs, correct, strict=True):
            # identities: one key per template; objects: the class name vs a synonym in the prompt
            key_ = t if key == "identity" else ("name" if p == t.format(c) else "synonym")
            by_template.setdefault(key_, []).append(ok)
        result[f"t2i_{key}_by_template"] = {t: float(np.mean(v)) for t, v in sorted(by_template.items())}
        result[f"t2i_{key}_images"] = len(imgs)
    result["t2i_identity_top1"] = per["identity"]
    result["t2i_object_top1"] = per["object"]
    result["t2i_concepts"] = concepts  # None: every concept of the world
    result["generation"] = dict(generation)
    result["generation_images_per_s"] = n_generated / generation_s
    result["generation_threads"] = torch.get_num_threads()
    result["gates"] = {
        k: {"threshold": v, "value": result[k], "pass": result[k] >= v} for k, v in GATES.items()
    }
    result["all_pass"] = all(g["pass"] for g in result["gates"].values())
    with phase(WRITE):
        write_json(out, result)
    return result
