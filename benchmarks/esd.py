"""ESD with the frozen model's samples one pipeline run per iteration (``sample_batch`` 1: the script's
way) against grouped runs (the configured ``sample_batch``), in one process on the same model and task:
wall time of each arm, the share of it spent sampling, their ratio, and how far the two arms' erasures
are apart (the same training up to float rounding).

The model is the toy world's shipped text-to-image model; the task's concepts and ESD settings are the
study's (`study.erase_spec`). Appends a row to benchmarks/results.jsonl.

    python benchmarks/esd.py --task object_ship --erase esd_x
    python benchmarks/esd.py --task identity_10 --erase esd_u --iterations 50
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from common import record, timed, toy_erase_setup  # benchmarks/ is on sys.path when run as a script

from resurgence.erasure.artifact import ConceptSpec
from resurgence.erasure.config import ESDConfig
from resurgence.erasure.esd import erase_concepts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="object_ship")
    p.add_argument("--erase", default="esd_x", help="an ESD erase variant of config.yaml")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iterations", type=int, default=None, help="per arm (default: the variant's)")
    args = p.parse_args(argv)
    device, world, spec, pipe = toy_erase_setup(args.task, args.erase, args.device)
    if spec["method"] != "esd":
        raise SystemExit(f"--erase {args.erase}: method {spec['method']!r}, not esd")
    cfg = ESDConfig.from_dict(spec["esd"])
    if args.iterations:
        cfg = dataclasses.replace(cfg, iterations=args.iterations)
    concepts = []
    for c in spec["concepts"]:
        concept = world.concept(c["name"])
        concepts.append(ConceptSpec(concept.name, tuple(world.eval_prompts(concept)), tuple(concept.names)))

    def arm(sample_batch: int):
        batched = dataclasses.replace(cfg, sample_batch=sample_batch)
        return timed(device, lambda: erase_concepts(pipe, concepts, batched, device, progress=False))

    erase_concepts(pipe, concepts, dataclasses.replace(cfg, iterations=2), device, progress=False)  # warm-up
    single_s, single = arm(1)
    grouped_s, grouped = arm(cfg.sample_batch)
    rel = max(
        float((grouped.dense[n] - single.dense[n]).norm() / single.dense[n].norm().clamp_min(1e-30))
        for n in single.dense
    )
    record(
        "esd",
        dict(
            task=args.task,
            erase=args.erase,
            train_method=cfg.train_method,
            iterations=cfg.iterations,
            num_inference_steps=cfg.num_inference_steps,
            device=str(device),
            model="toy world t2i (shipped)",
            one_run_per_iteration_s=round(single_s, 2),
            one_run_per_iteration_sampling_s=round(single.report["sampling_s"], 2),
            sample_batch=cfg.sample_batch,
            grouped_s=round(grouped_s, 2),
            grouped_sampling_s=round(grouped.report["sampling_s"], 2),
            speedup=round(single_s / grouped_s, 3),
            max_relative_delta_difference=rel,
        ),
    )


if __name__ == "__main__":
    main()
