"""Erase/retain frontier of every task in a config (resurgence.mace.capacity), written as a CSV.

Usage:  python tools/analysis/erasure_capacity.py [--config config.yaml ...] [--out docs/erasure_capacity.csv]
Runs on CPU in seconds on the toy world: it needs only the text encoder.
"""

from __future__ import annotations

import argparse
import csv

import torch

from resurgence import study
from resurgence.config import load_config
from resurgence.io import atomic_path
from resurgence.mace.capacity import concept_differences, erasure_tradeoff, eval_prompt_sets
from resurgence.stages import load_study_pipeline
from resurgence.world import get_world

WEIGHTS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", default=["config.yaml"])
    ap.add_argument("--out", default="docs/erasure_capacity.csv")
    args = ap.parse_args()
    config = load_config(args.config)
    world = get_world(config)
    pipe = load_study_pipeline(study.model_specs(config), "cpu")
    rows = []
    with torch.no_grad():
        for task, t in config["tasks"].items():
            spec = study.erase_spec(config, task, "default", world)
            mappings = {c["mapping"] for c in spec["concepts"]}
            if len(mappings) != 1:
                raise SystemExit(f"{task}: per-concept mapping concepts are not handled here")
            (mapping,) = mappings
            De = concept_differences(pipe, eval_prompt_sets(world, t["erase"]), mapping)
            Dr = concept_differences(pipe, eval_prompt_sets(world, t["retain"]), mapping)
            for p in erasure_tradeoff(De, Dr, WEIGHTS):
                rows.append(
                    dict(
                        task=task,
                        n_erased=len(t["erase"]),
                        retain_weight=p.weight,
                        erased_left=round(p.erased_left, 5),
                        retained_distortion=round(p.retained_distortion, 5),
                    )
                )
            print(
                task,
                " ".join(
                    f"w{r['retain_weight']}:{r['erased_left']:.3f}/{r['retained_distortion']:.3f}"
                    for r in rows
                    if r["task"] == task
                ),
            )
    with atomic_path(args.out) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
