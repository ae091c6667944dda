"""MACE's training images drawn per concept (before 2026-12-06) and all together, side by side in one process.

The study's identity_100 erasure draws 8 images of each of its 100 concepts before it changes any weight
(`resurgence.mace.images`). This times both ways of drawing them with the shipped toy models and the study's
settings (the erase stage's generation config and segmenter), and says how far apart their images are: a
batch of another size may round differently, so the two are compared pixel by pixel (mean absolute
difference in 0-255 units and the share of pixels that differ at all) and mask by mask.

    python benchmarks/mace_data.py --task identity_100
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import record  # benchmarks/ is on sys.path when run as a script

from resurgence import study
from resurgence.config import load_config
from resurgence.mace.config import EraseConfig
from resurgence.mace.erase import concept_requests
from resurgence.mace.images import concept_image_source, even_batch
from resurgence.stages import erase_generation_config, load_segmenter, load_study_pipeline
from resurgence.world import get_world

ROOT = Path(__file__).resolve().parents[1]


def pixel_difference(a: list, b: list) -> dict[str, float]:
    """Mean absolute difference (0-255) and the share of pixel values that differ, over paired images."""
    x = np.stack([np.asarray(i, dtype=np.int16) for i in a])
    y = np.stack([np.asarray(i, dtype=np.int16) for i in b])
    d = np.abs(x - y)
    return {"mean_abs": float(d.mean()), "share_differing": float((d > 0).mean()), "max_abs": int(d.max())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="identity_100")
    p.add_argument("--erase", default="default")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--concepts", type=int, default=None, help="only the first N concepts of the task")
    p.add_argument("--label", default="")
    args = p.parse_args(argv)

    config = load_config([ROOT / "config.yaml"])
    world = get_world(config)
    spec = study.erase_spec(config, args.task, args.erase, world)
    cfg = EraseConfig.from_dict(spec["mace"])
    models = study.task_models(config, args.task)
    pipe = load_study_pipeline(models, args.device)
    segmenter = load_segmenter(models, args.device)
    gen_cfg = erase_generation_config(config["generation"], models.get("dtype", "float32"))
    names = [c["name"] for c in spec["concepts"]][: args.concepts]
    prompts_of = {n: tuple(world.eval_prompts(world.concept(n))) for n in names}
    requests = concept_requests(names, cfg)

    drawn, seconds = {}, {}
    for arm, together in (("per_concept", False), ("together", True)):
        source = concept_image_source(
            pipe,
            prompts_of,
            gen_cfg,
            lambda n, im: segmenter.segment(im, n),
            args.device,
            together,
            progress=False,
        )
        source(requests[:1])  # warm-up: the first batch pays for lazy initialisation
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        drawn[arm] = source(requests)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds[arm] = time.perf_counter() - t0

    a = [im for ims, _ in drawn["per_concept"] for im in ims]
    b = [im for ims, _ in drawn["together"] for im in ims]
    masks_a = np.concatenate([m for _, m in drawn["per_concept"]])
    masks_b = np.concatenate([m for _, m in drawn["together"]])
    record(
        "mace_data",
        dict(
            task=args.task,
            erase=args.erase,
            concepts=len(names),
            images=len(a),
            device=args.device,
            dtype=gen_cfg.dtype,
            steps=gen_cfg.steps,
            batch_size=gen_cfg.batch_size,
            together_batch=even_batch(len(requests) * cfg.images_per_concept, gen_cfg.batch_size),
            per_concept_s=round(seconds["per_concept"], 2),
            together_s=round(seconds["together"], 2),
            speedup=round(seconds["per_concept"] / seconds["together"], 3),
            pixels=pixel_difference(a, b),
            mask_share_differing=float((masks_a != masks_b).mean()),
            label=args.label,
        ),
    )


if __name__ == "__main__":
    main()
