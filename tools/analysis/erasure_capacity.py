"""Erase/retain frontier of every task in a config (resurgence.mace.capacity), written as a CSV.

Usage:  python tools/analysis/erasure_capacity.py [--config config.yaml ...] [--out docs/erasure_capacity.csv]
Runs on CPU in seconds on the toy world: it needs only the text encoder.
"""

from __future__ import annotations

import argparse

import torch
from common import (  # tools/analysis/ is on sys.path
    load_study_text_side,
    main_mapping,
    write_csv,
)

from resurgence import study
from resurgence.mace.capacity import concept_differences, erasure_tradeoff, eval_prompt_sets

WEIGHTS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", default=["config.yaml"])
    ap.add_argument("--out", default="docs/erasure_capacity.csv")
    args = ap.parse_args()
    config, world, pipe = load_study_text_side(args.config)
    rows = []
    with torch.no_grad():
        for task, t in config["tasks"].items():
            mapping = study.probe_mappings(config, task, "default")
            De = concept_differences(pipe, eval_prompt_sets(world, t["erase"]), mapping)
            Dr = concept_differences(pipe, eval_prompt_sets(world, t["retain"]), main_mapping(mapping))
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
    write_csv(args.out, list(rows[0]), [list(r.values()) for r in rows])


if __name__ == "__main__":
    main()
