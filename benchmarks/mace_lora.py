"""MACE's concept LoRAs one after the other (the reference) against side by side (`lora_concepts_per_step`),
in one process on the same data: wall time of each arm, their ratio, and how far the LoRAs of the two arms
are apart (they are the same LoRAs up to float rounding).

The model is the toy world's shipped text-to-image model; the task's concepts, prompts and MACE settings
are the study's (`study.erase_spec`). Training
images are noise and the masks a centred ellipse: the LoRA phase's cost does not depend on them. Appends a
row to benchmarks/results.jsonl.

    python benchmarks/mace_lora.py --task identity_10                 # toy world, its erase settings
    python benchmarks/mace_lora.py --task identity_100 --steps 10     # fewer LoRA steps per arm
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
from common import record, timed, toy_erase_setup  # benchmarks/ is on sys.path when run as a script
from erase import ellipse_mask
from PIL import Image

from resurgence.mace.config import EraseConfig
from resurgence.mace.lora import ConceptData, pipeline_resolution, train_concept_loras


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="identity_10")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None, help="LoRA steps per arm (default: the task's)")
    p.add_argument("--side-by-side", type=int, default=None, help="concepts per step (default: all)")
    args = p.parse_args(argv)
    device, world, spec, pipe = toy_erase_setup(args.task, "default", args.device)
    cfg = EraseConfig.from_dict(spec["mace"])
    if args.steps:
        cfg = dataclasses.replace(cfg, lora_steps=args.steps)
    size = pipeline_resolution(pipe)
    rng = np.random.default_rng(0)
    mask = ellipse_mask(size)
    items = []
    for i, c in enumerate(spec["concepts"]):
        concept = world.concept(c["name"])
        images = [
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
            for _ in range(cfg.images_per_concept)
        ]
        masks = np.repeat(mask[None], cfg.images_per_concept, axis=0)
        items.append(
            ConceptData(tuple(world.eval_prompts(concept)), tuple(concept.names), images, masks, cfg.seed + i)
        )
    per_step = args.side_by_side or len(items)

    def arm(k: int) -> tuple[float, list[dict[str, torch.Tensor]]]:
        def train() -> list[dict[str, torch.Tensor]]:
            chunks = (items[start : start + k] for start in range(0, len(items), k))
            return [sd for chunk in chunks for sd, _ in train_concept_loras(pipe, chunk, cfg, device)]

        return timed(device, train)

    train_concept_loras(pipe, items[:1], dataclasses.replace(cfg, lora_steps=1), device)  # warm-up
    alone_s, alone = arm(1)
    together_s, together = arm(per_step)
    diff = max(float((a[k] - b[k]).abs().max()) for a, b in zip(alone, together, strict=True) for k in a)
    scale = max(float(a[k].abs().max()) for a in alone for k in a)
    record(
        "mace_lora",
        dict(
            task=args.task,
            concepts=len(items),
            lora_steps=cfg.lora_steps,
            train_batch_size=cfg.train_batch_size,
            device=str(device),
            model="toy world t2i (shipped)",
            one_after_the_other_s=round(alone_s, 2),
            side_by_side_s=round(together_s, 2),
            concepts_per_step=per_step,
            speedup=round(alone_s / together_s, 3),
            max_abs_lora_difference=diff,
            max_abs_lora_value=scale,
        ),
    )


if __name__ == "__main__":
    main()
