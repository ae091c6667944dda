"""`python -m resurgence <stage>`: the command every Snakemake rule calls.

Each stage is usable without Snakemake: specs are JSON strings, or `@file.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from resurgence.config import load_schema


def _json(value: str) -> Any:
    if value.startswith("@"):
        return json.loads(Path(value[1:]).read_text())
    return json.loads(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resurgence", description=__doc__)
    # The toy world's defaults are the config schema's, written there alone.
    toy = load_schema()["properties"]["toyworld"]["properties"]
    sub = p.add_subparsers(dest="stage", required=True)

    tw = sub.add_parser("toyworld", help="train the toy world's models or measure their quality")
    twsub = tw.add_subparsers(dest="action", required=True)
    t = twsub.add_parser("train", help="train every toy model (or --only some) from scratch")
    t.add_argument("--out-dir", required=True)
    t.add_argument(
        "--profile",
        choices=toy["train_profile"]["enum"],
        default=toy["train_profile"]["default"],
        help="auto: gpu with CUDA",
    )
    t.add_argument("--only", nargs="*", choices=["t2i", "clip", "detector", "segmenter"])
    t.add_argument("--seed", type=int, default=toy["seed"]["default"])
    t.add_argument("--device", default="auto")
    t.add_argument(
        "--knowledge", type=_json, default=None, help="toyworld.knowledge: the concept geometry (JSON)"
    )
    t.add_argument(
        "--calibration",
        type=_json,
        default=None,
        help="erase set per domain whose calibration statistics to record",
    )
    t.add_argument(
        "--exclude", type=_json, default=[], help="concept names (JSON list) the t2i model never sees"
    )
    t.add_argument(
        "--clip-knowledge-weight",
        type=float,
        default=None,
        help="weight of CLIP's knowledge Gram loss (default: ToyClipTrainConfig's)",
    )
    t.add_argument(
        "--clip-knowledge-balance",
        default=None,
        help="how CLIP's knowledge Gram loss averages its name pairs (ToyClipTrainConfig.knowledge_balance)",
    )
    t.add_argument(
        "--unet-steps", type=int, default=None, help="the t2i UNet's step count (instead of its time budget)"
    )
    q = twsub.add_parser("quality", help="the toy world's quality gates -> quality.json")
    q.add_argument("--models", type=_json, required=True)
    q.add_argument("--generation", type=_json, required=True)
    q.add_argument("--seed", type=int, default=toy["seed"]["default"])
    q.add_argument(
        "--images",
        type=int,
        default=toy["quality_images"]["default"],
        help="images per concept and template",
    )
    q.add_argument(
        "--concepts",
        type=int,
        default=None,
        help="prompt only the first N identities and objects (default: all)",
    )
    q.add_argument("--out", required=True)
    q.add_argument("--device", default="auto")

    e = sub.add_parser("erase", help="MACE: erase a task's concepts -> erased_lora.safetensors")
    e.add_argument("--spec", type=_json, required=True)
    e.add_argument("--models", type=_json, required=True)
    e.add_argument("--generation", type=_json, required=True)
    e.add_argument("--out-dir", required=True)
    e.add_argument("--device", default="auto")

    d = sub.add_parser("ftdata", help="generate a fine-tune set with the base model")
    d.add_argument("--spec", type=_json, required=True)
    d.add_argument("--world", type=_json, required=True)
    d.add_argument("--models", type=_json, required=True)
    d.add_argument("--generation", type=_json, required=True)
    d.add_argument("--out-dir", required=True)
    d.add_argument("--device", default="auto")

    f = sub.add_parser("finetune", help="fine-tune an erased model (LoRA or full)")
    f.add_argument("--spec", type=_json, required=True)
    f.add_argument("--models", type=_json, required=True)
    f.add_argument("--erasure", required=True)
    f.add_argument("--data", required=True)
    f.add_argument("--out-dir", required=True)
    f.add_argument("--device", default="auto")

    g = sub.add_parser("generate", help="images of one model state for a task's prompts and seeds")
    g.add_argument("--spec", type=_json, required=True)
    g.add_argument("--models", type=_json, required=True)
    g.add_argument("--erasure")
    g.add_argument("--finetune")
    g.add_argument("--step", type=int)
    g.add_argument(
        "--pool", help="a base state: take its images from this shared pool's folder instead of rendering"
    )
    g.add_argument("--out-dir", required=True)
    g.add_argument("--device", default="auto")

    v = sub.add_parser("evaluate", help="score one model state's images -> tidy CSV")
    v.add_argument("--images", required=True)
    v.add_argument("--reference", required=True)
    v.add_argument("--labels", type=_json, required=True)
    v.add_argument("--state", type=_json, required=True)
    v.add_argument("--models", type=_json, required=True)
    v.add_argument("--out", required=True)
    v.add_argument("--device", default="auto")

    r = sub.add_parser("reversion", help="how far one fine-tune run's checkpoints undo its erasure -> CSV")
    r.add_argument("--run", type=_json, required=True, help="the run's task, erase, ftset and ftmethod")
    r.add_argument("--models", type=_json, required=True)
    r.add_argument(
        "--mapping", type=_json, required=True, help="each erased concept's mapping phrase (its probe rows)"
    )
    r.add_argument("--erasure", required=True)
    r.add_argument("--finetune", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--device", default="auto")

    rs = sub.add_parser(
        "reversion-summary", help="every run's reversion beside its resurgence: table and figure"
    )
    rs.add_argument("--reversion", nargs="+", required=True)
    rs.add_argument("--metrics", nargs="+", required=True)
    rs.add_argument("--table", required=True)
    rs.add_argument("--figure", required=True)

    tb = sub.add_parser("tables", help="tidy, summary and resurgence tables of one experiment")
    tb.add_argument("--experiment", required=True)
    tb.add_argument("--runs", type=_json, required=True)
    tb.add_argument("--inputs", nargs="+", required=True)
    tb.add_argument("--out-dir", required=True)

    fg = sub.add_parser("figure", help="one of the paper's figures from a summary table")
    fg.add_argument("--name", required=True)
    fg.add_argument("--summary", required=True)
    fg.add_argument("--out", required=True)
    fg.add_argument(
        "--tasks",
        type=_json,
        default={},
        help="the runs' task facts (study.figure_tasks), for the geometry figure",
    )

    gr = sub.add_parser("grids", help="compose image grids of base / erased / fine-tuned states")
    gr.add_argument("--inputs", nargs="+", required=True)
    gr.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    from resurgence.jobs import exclusive_writer, stop_on_sigterm, watch_owner

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop_on_sigterm()
    watch_owner()
    if getattr(args, "device", "auto") in ("auto", "cuda"):
        from resurgence.gpus import pin_job_to_gpu

        gpu = pin_job_to_gpu()  # before anything initialises CUDA
        if gpu is not None:
            logging.getLogger("resurgence").info("job pinned to GPU %d", gpu)
    from resurgence import phases, stages

    handler = getattr(stages, f"run_{args.stage.replace('-', '_')}")
    started = phases.job_start()
    startup_s = time.time() - started
    phases.JOB_CLOCK.reset()
    # A stage that writes a folder holds it for its whole run: one writer at a time.
    with exclusive_writer(args.out_dir) if getattr(args, "out_dir", None) else contextlib.nullcontext():
        handler(args)
    # Where this job's time went, for the study's profile (benchmarks/study.py reads it from the log).
    split = phases.split_job(phases.JOB_CLOCK.seconds, startup_s, time.time() - started)
    print(phases.phases_line(split), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
