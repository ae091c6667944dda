"""The toy world's quality gates at fewer sampler steps: may the study sample faster?

Sampling is most of the default study's time on a CPU, and a sampler at fewer steps is allowed only if
the world's quality gates hold with it (issue: the study's speed). Each setting (``scheduler:steps``)
is measured by `resurgence.toyworld.quality.measure_quality` on the configured (shipped) models, in this
one process, the study's own setting first: its gates and images/s are the baseline of the ratios.
Appends one row naming the machine to benchmarks/results.jsonl. Choosing a setting also needs the
erasure-efficacy gates at it (tools/device/efficacy_sweep.yaml); this measures the world's gates only.

    python benchmarks/sampler_steps.py --settings ddim:15 dpm:15 dpm:10 [--images 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import record  # benchmarks/ is on sys.path when run as a script

from resurgence import study
from resurgence.config import load_config
from resurgence.generate.engine import GenerationConfig, resolve_dtype
from resurgence.toyworld.quality import GATES, measure_quality

ROOT = Path(__file__).resolve().parents[1]


def parse_setting(text: str) -> tuple[str, int]:
    scheduler, sep, steps = text.partition(":")
    if not sep or not steps.isdigit():
        raise argparse.ArgumentTypeError(f"a setting is scheduler:steps (e.g. dpm:10), got {text!r}")
    return scheduler, int(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", default=[str(ROOT / "config.yaml")])
    ap.add_argument("--settings", nargs="+", type=parse_setting, required=True)
    ap.add_argument("--images", type=int, default=None, help="images per prompt (default: the config's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    config = load_config(args.config)
    models = study.model_specs(config)
    study_cfg = GenerationConfig(**config["generation"])
    study_setting = (study_cfg.scheduler, study_cfg.steps)
    settings = [study_setting, *[s for s in args.settings if s != study_setting]]
    images = args.images or config["toyworld"]["quality_images"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scheduler, steps in settings:
            generation = dict(config["generation"], scheduler=scheduler, steps=steps)
            q = measure_quality(
                models, generation, Path(tmp) / "q.json", images=images, device=args.device, seed=0
            )
            rows.append(
                dict(
                    scheduler=scheduler,
                    steps=steps,
                    images_per_s=round(q["generation_images_per_s"], 3),
                    all_pass=q["all_pass"],
                    **{gate: round(q[gate], 4) for gate in GATES},
                    t2i_identity_by_template=q["t2i_identity_by_template"],
                )
            )
            print(rows[-1], flush=True)
    base = rows[0]
    for r in rows:
        r["speedup_vs_study_setting"] = round(r["images_per_s"] / base["images_per_s"], 3)
        r["t2i_identity_change_pp"] = round(100 * (r["t2i_identity_top1"] - base["t2i_identity_top1"]), 2)
    record(
        "sampler_steps",
        dict(
            label=args.label,
            study_setting=f"{study_setting[0]}:{study_setting[1]}",
            images_per_prompt=images,
            dtype=str(resolve_dtype(study_cfg.dtype, torch.device(args.device))),
            gates=GATES,
            settings=rows,
        ),
    )


if __name__ == "__main__":
    main()
