"""MACE erasure cost (wall time per phase, peak memory) on a Stable-Diffusion-architecture pipeline.

Runs the study's own erase path for one task of a preset (default: the paper's 100-celebrity
task of config.sd14.yaml, with its MACE settings, mapping and preserve sets, resolved by
`study.erase_spec`) on random weights of the architecture: weights do not change the cost.
What differs from a real run, and is recorded in the row: images per concept and sampling steps
of the training images may be reduced, and the masks come from a fixed centred ellipse instead
of Grounded-SAM (its cost is not part of MACE's). FLOPs (for TFLOP/s achieved) are counted with
`torch.utils.flop_counter` on one- and two-concept erases and extrapolated linearly to the concept
count: the per-concept work (data, LoRA) is their difference and the once-per-erase work (the
preservation caches) is not multiplied (linalg solves are not counted).
Appends a row to benchmarks/results.jsonl.

    python benchmarks/erase.py --arch sd14 --task identity_100 --images-per-concept 2 --data-steps 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import fast_cuda_math, record  # benchmarks/ is on sys.path when run as a script
from torch.utils.flop_counter import FlopCounterMode

from resurgence import study
from resurgence.config import deep_merge, load_config
from resurgence.erasure.artifact import ConceptSpec
from resurgence.mace.config import EraseConfig
from resurgence.mace.erase import erase_concepts
from resurgence.mace.images import concept_image_source
from resurgence.models.pipeline import ARCHITECTURES, build_random_pipeline
from resurgence.stages import erase_generation_config
from resurgence.world import get_world

ROOT = Path(__file__).resolve().parents[1]


def ellipse_mask(size: int) -> np.ndarray:
    """A centred ellipse covering ~30% of the image: where a portrait's subject usually is."""
    y, x = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    return (x / 0.55) ** 2 + (y / 0.7) ** 2 <= 1


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="sd14", choices=sorted(ARCHITECTURES))
    p.add_argument("--preset", default=str(ROOT / "config.sd14.yaml"))
    p.add_argument("--task", default="identity_100")
    p.add_argument("--erase", default="default", help="erase variant of the preset")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images-per-concept", type=int, default=None, help="default: the preset's (MACE: 8)")
    p.add_argument("--lora-steps", type=int, default=None, help="default: the preset's (MACE: 50)")
    p.add_argument("--data-steps", type=int, default=None, help="sampling steps of MACE's training images")
    p.add_argument("--data-batch", type=int, default=16)
    p.add_argument(
        "--data-per-concept", action="store_true", help="draw each concept's images alone (before 2026-12-06)"
    )
    p.add_argument("--concepts", type=int, default=None, help="erase only the first N concepts of the task")
    p.add_argument("--dtype", default="float32", help="dtype of the erased pipeline (MACE trains in fp32)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (two short extra erases)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    fast_cuda_math(device)

    config = (
        load_config([ROOT / "config.yaml", Path(args.preset)])
        if args.preset
        else load_config([ROOT / "config.yaml"])
    )
    captions = config.get("evaluation", {}).get("captions", {}).get("file")
    caption_source = captions
    if captions and not (ROOT / captions).exists() and not Path(captions).exists():
        # COCO captions are the user's file; the toy world's free captions stand in (same count, same cost).
        from resurgence.toyworld.concepts import toy_world

        stand_in = Path(tempfile.mkdtemp()) / "captions.txt"
        stand_in.write_text("\n".join(toy_world(0).free_captions(5000, seed=0)) + "\n")
        config = deep_merge(config, {"evaluation": {"captions": {"file": str(stand_in)}}})
        caption_source = "toy-world free captions (stand-in for COCO)"
    if args.concepts:
        task = config["tasks"][args.task]
        config = deep_merge(config, {"tasks": {args.task: {**task, "erase": task["erase"][: args.concepts]}}})
    world = get_world(config)
    spec = study.erase_spec(config, args.task, args.erase, world)
    mace = dict(spec["mace"])
    if args.images_per_concept:
        mace["images_per_concept"] = args.images_per_concept
    if args.lora_steps:
        mace["lora_steps"] = args.lora_steps
    cfg = EraseConfig.from_dict(mace)
    concepts = [
        ConceptSpec(
            name=c["name"],
            prompts=tuple(world.eval_prompts(world.concept(c["name"]))),
            phrases=tuple(world.concept(c["name"]).names),
        )
        for c in spec["concepts"]
    ]
    prompts_of = {c.name: c.prompts for c in concepts}

    pipe = build_random_pipeline(args.arch)
    pipe.to(device, getattr(torch, args.dtype))
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    gen_cfg = erase_generation_config(
        {
            **config["generation"],
            "batch_size": args.data_batch,
            "height": None,
            "width": None,
            **({"steps": args.data_steps} if args.data_steps else {}),
        },
        args.dtype,
    )
    mask = ellipse_mask(resolution)
    timing = {"data_s": 0.0}

    draw = concept_image_source(
        pipe,
        prompts_of,
        gen_cfg,
        lambda name, images: np.repeat(mask[None], len(images), axis=0),
        device,
        together=not args.data_per_concept,
        progress=False,
    )

    def image_source(requests):
        t = time.perf_counter()
        drawn = draw(requests)
        timing["data_s"] += time.perf_counter() - t
        return drawn

    t0 = time.perf_counter()
    erasure = erase_concepts(pipe, concepts, cfg, image_source, device=device)
    wall = time.perf_counter() - t0
    data_s = timing["data_s"]  # before the FLOP count's erases add to it
    rep = erasure.report
    flops = None
    if not args.no_flops:
        del pipe, erasure
        counts = []
        for n in range(1, min(2, len(concepts)) + 1):
            pipe = build_random_pipeline(args.arch)
            pipe.to(device, getattr(torch, args.dtype))
            with FlopCounterMode(display=False) as fc:
                erase_concepts(pipe, concepts[:n], cfg, image_source, device=device)
            counts.append(fc.get_total_flops())
            del pipe
        per_concept = counts[1] - counts[0] if len(counts) == 2 else counts[0]
        flops = counts[0] + (len(concepts) - 1) * per_concept
    lora_steps_total = cfg.lora_steps * len(concepts) if not cfg.refine_only else 0
    record(
        "mace_erase",
        dict(
            arch=args.arch,
            preset=Path(args.preset).name,
            task=args.task,
            concepts=len(concepts),
            device=str(device),
            dtype=args.dtype,
            resolution=resolution,
            images_per_concept=cfg.images_per_concept,
            data_steps=gen_cfg.steps,
            data_batch=args.data_batch,
            data_drawn="per concept" if args.data_per_concept else "together",
            lora_steps_per_concept=cfg.lora_steps,
            lora_rank=cfg.lora_rank,
            n_coexisting=rep["refine"]["n_coexisting"],
            n_prior=rep["refine"]["n_prior"],
            seconds=round(wall, 1),
            data_seconds=round(data_s, 1),
            mace_seconds=round(wall - data_s, 1),
            tflop_estimate=round(flops / 1e12, 1) if flops else None,
            achieved_tflop_s=round(flops / wall / 1e12, 1) if flops else None,
            lora_steps_per_s=round(lora_steps_total / rep["phase_s"]["lora"], 2)
            if lora_steps_total
            else None,
            phase_seconds={k: round(v, 2) for k, v in rep.get("phase_s", {}).items()},
            peak_memory=rep["peak_memory"],
            masks="centred ellipse (stand-in for Grounded-SAM)",
            preserve_captions=caption_source,
        ),
    )


if __name__ == "__main__":
    main()
