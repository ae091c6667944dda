"""GPU-hours a study preset needs, from its DAG's work counts and measured per-unit rates.

Counts what the study's jobs do (images generated per model state, fine-tune-set images, MACE
training images and LoRA steps, fine-tuning steps) with the same `resurgence.study` functions
the Snakefile uses, then divides by the rates of benchmarks/results.jsonl rows measured on one
GPU (`--gpu` picks them), each rate from the rows measured with the preset's own settings
(generation's, each fine-tune method's, MACE's dtype); a stage without such a row is listed under
"not_measured" and left out of the total. MACE's training images are sampled in the erased model's
dtype without compiling, so their time comes from the mace_erase rows (seconds per image and
sampling step), not from the generation rate. Evaluation (detector, CLIP, FID) is not counted.

    python benchmarks/paper_cost.py --preset config.sd14.yaml --gpu H100
    python benchmarks/paper_cost.py --preset config.sd14.yaml config.sd21.yaml --gpu H200
    (``--arch`` picks the rows' architecture: by default the preset world's released model at 512 px,
    sd14 or sd21_base; sd21 for the 768 px SD v2.1)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from common import RESULTS  # benchmarks/ is on sys.path when run as a script

from resurgence import layout, study
from resurgence.config import load_config
from resurgence.finetune.config import FinetuneConfig
from resurgence.generate.engine import GenerationConfig, resolve_dtype
from resurgence.mace.config import EraseConfig
from resurgence.models.pipeline import ARCHITECTURES
from resurgence.world import get_world

ROOT = Path(__file__).resolve().parents[1]
# The architecture whose rows price a preset world by default: its released model at 512 px.
DEFAULT_ARCH = {"sd14": "sd14", "sd21": "sd21_base"}


def work_counts(config: dict) -> dict[str, float]:
    """Units of work in the whole DAG of ``config`` (every figure's runs, deduplicated like the DAG)."""
    world = get_world(config)
    n_prompts = {}

    def prompts_of(name: str) -> int:
        if name not in n_prompts:
            n_prompts[name] = len(world.eval_prompts(world.concept(name)))
        return n_prompts[name]

    seeds = len(config["seeds"])
    caps = config["evaluation"]["captions"]
    images = 0
    states: set[tuple[str, str]] = set()
    erasures: set[tuple[str, str]] = set()
    finetunes: set[tuple] = set()
    ftsets: set[tuple[str, str]] = set()
    for run in study.all_runs(config):
        t = config["tasks"][run.task]
        final = study.finetune_spec(config, run.ftmethod)["steps"]
        erasures.add((run.task, run.erase))
        finetunes.add((run.task, run.erase, run.ftset, run.ftmethod))
        kind = config["finetune_sets"][run.ftset]["kind"]
        ftsets.add((run.ftset, run.task if kind == "tercile" else ""))
        for state in study.run_states(config, run):
            if (run.task, state) in states:
                continue
            states.add((run.task, state))
            erased = sum(prompts_of(n) for n in t["erase"]) * seeds
            step = layout.parse_state(run.task, state).get("step")
            if step is not None and int(step) < final:  # trajectory checkpoints: erased concepts only
                images += erased
                continue
            images += erased + sum(prompts_of(n) for n in t.get("retain", [])) * seeds
            if t["domain"] in caps.get("domains", ["identity"]):
                images += int(caps.get("n", 100))
    ft_images = 0
    for name, task in ftsets:
        fs = config["finetune_sets"][name]
        if fs["kind"] == "tercile":  # concepts of the task's domain; the erased ones' prompt count stands in
            n = fs.get("n_concepts", 10) * prompts_of(config["tasks"][task]["erase"][0])
        else:
            n = sum(prompts_of(c) for c in fs["concepts"])
        ft_images += n * fs["images_per_prompt"]
    mace_images = mace_lora_steps = 0
    for task, erase in erasures:
        names = config["tasks"][task]["erase"]
        preset = (
            EraseConfig.celebrity(len(names))
            if config["tasks"][task]["domain"] == "identity"
            else EraseConfig.objects(names)
        )
        s = {**preset.to_dict(), **study.erase_settings(config, task, erase)}
        mace_images += len(names) * int(s["images_per_concept"])
        mace_lora_steps += 0 if s.get("refine_only") else len(names) * int(s["lora_steps"])
    ft_steps: dict[str, int] = {}
    for _, _, _, method in finetunes:
        ft_steps[method] = ft_steps.get(method, 0) + study.finetune_spec(config, method)["steps"]
    return dict(
        model_states=len(states),
        eval_images=images,
        finetune_set_images=ft_images,
        mace_images=mace_images,
        mace_lora_steps=mace_lora_steps,
        erasures=len(erasures),
        finetune_steps=dict(sorted(ft_steps.items())),
        finetunes=len(finetunes),
    )


def _matches(row: dict, g: GenerationConfig) -> bool:
    """Whether a generation row was measured with the preset's sampling and engine settings."""
    # "auto" is bf16 on the GPUs these rows come from (torch.cuda.is_bf16_supported on H100/H200)
    dtype = torch.bfloat16 if g.dtype == "auto" else resolve_dtype(g.dtype)
    return (
        row.get("steps") == g.steps
        and row.get("guidance") == g.guidance_scale
        and row.get("batch") == g.batch_size
        and row.get("compile", "none") == g.compile
        and (row.get("attention") or "default") == g.attention
        and bool(row.get("channels_last")) == g.channels_last
        and resolve_dtype(row["dtype"]) == dtype
        and not row.get("inductor")
        and not row.get("freeze_weights")
        and (row.get("linear_fp8") or "none") == g.linear_fp8
    )


def _finetune_matches(row: dict, f: FinetuneConfig) -> bool:
    """Whether a fine-tune row was measured with a method's settings that change a step's cost."""
    return (
        row.get("method") == f.method
        and row.get("batch") == f.batch_size
        and row.get("mixed_precision", "no") == f.mixed_precision
        and (f.method != "lora" or row.get("rank") == f.rank)
        and f.grad_accum == 1  # the benchmark steps without accumulation
        and not f.train_text_encoder
    )


def measured_rates(
    gpu: str,
    generation: dict,
    finetune_methods: dict[str, dict] | None = None,
    erase_dtype: str = "float32",
    arch: str = "sd14",
    path: Path = RESULTS,
) -> dict:
    """Per-unit rates from the rows of one GPU, each the median of the rows measured with the preset's
    own settings (generation's; each fine-tune method's): other settings run at other speeds."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [
        r for r in rows if (r.get("machine", {}).get("gpu") or "").find(gpu) >= 0 and r.get("arch") == arch
    ]
    # The configs fill in the engine's and the trainer's defaults for what the preset leaves out.
    g = GenerationConfig.from_dict(generation)
    gen = [r["images_per_s"] for r in rows if r["benchmark"] == "generation" and _matches(r, g)]
    ft, ft_cached = {}, {}
    for name, spec in (finetune_methods or {}).items():
        f = FinetuneConfig.from_dict(spec)
        matching = [r for r in rows if r["benchmark"] == "finetune" and _finetune_matches(r, f)]
        # The trainer encodes each example once; rows of a trainer that encoded every step (older rows, or
        # benchmarks/finetune.py's baseline arm) price a run only where no row of the cached one exists.
        cached = [r for r in matching if r.get("encodings_cached")]
        got = [r["steps_per_s"] for r in cached or matching]
        ft[name] = statistics.median(got) if got else None
        ft_cached[name] = bool(cached)
    # MACE trains, and samples its training images, in the erased model's dtype, uncompiled
    # (stages.erase_generation_config): its own rows give both rates, not the generation rows.
    mace = [r for r in rows if r["benchmark"] == "mace_erase" and r.get("dtype") == erase_dtype]
    lora = [r["lora_steps_per_s"] for r in mace if r.get("lora_steps_per_s")]
    data = [r["data_seconds"] / (r["concepts"] * r["images_per_concept"] * r["data_steps"]) for r in mace]
    return dict(
        images_per_s=statistics.median(gen) if gen else None,
        generation_rows=len(gen),
        finetune_steps_per_s=ft,
        finetune_encodings_cached=ft_cached,
        mace_lora_steps_per_s=statistics.median(lora) if lora else None,
        mace_data_s_per_image_step=statistics.median(data) if data else None,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--preset",
        nargs="+",
        default=[str(ROOT / "config.sd14.yaml")],
        help="overlays on config.yaml, in order",
    )
    p.add_argument(
        "--arch", choices=sorted(set(ARCHITECTURES) - {"tiny", "toy"}), help="the rows' architecture"
    )
    p.add_argument("--gpu", default="H100", help="substring of the GPU name of the rows to use")
    p.add_argument("--mace-lora-steps-per-s", type=float, help="when no mace_erase row has been recorded")
    args = p.parse_args(argv)
    config = load_config([ROOT / "config.yaml", *map(Path, args.preset)])
    arch = args.arch or DEFAULT_ARCH[config["world"]]
    work = work_counts(config)
    methods = {name: study.finetune_spec(config, name) for name in work["finetune_steps"]}
    rates = measured_rates(
        args.gpu, config["generation"], methods, config["models"].get("dtype", "float32"), arch=arch
    )
    if args.mace_lora_steps_per_s:
        rates["mace_lora_steps_per_s"] = args.mace_lora_steps_per_s
    hours = {}
    if rates["images_per_s"]:
        hours["generation"] = (
            (work["eval_images"] + work["finetune_set_images"]) / rates["images_per_s"] / 3600
        )
    if rates[
        "mace_data_s_per_image_step"
    ]:  # per sampling step: the rows may sample fewer steps than the preset
        steps = GenerationConfig.from_dict(config["generation"]).steps
        hours["mace_data"] = work["mace_images"] * steps * rates["mace_data_s_per_image_step"] / 3600
    if rates["mace_lora_steps_per_s"]:
        hours["mace_lora"] = work["mace_lora_steps"] / rates["mace_lora_steps_per_s"] / 3600
    for name, steps in work["finetune_steps"].items():
        if rates["finetune_steps_per_s"][name]:
            hours[f"{name}_finetune"] = steps / rates["finetune_steps_per_s"][name] / 3600
    missing = ["generation"] * (not rates["images_per_s"]) + ["mace_lora"] * (
        not rates["mace_lora_steps_per_s"]
    )
    missing += ["mace_data"] * (not rates["mace_data_s_per_image_step"])
    missing += [f"{k}_finetune" for k, v in rates["finetune_steps_per_s"].items() if not v]
    hours["total"] = sum(hours.values())
    print(
        json.dumps(
            dict(
                preset=[Path(p).name for p in args.preset],
                arch=arch,
                gpu=args.gpu,
                work=work,
                rates=rates,
                gpu_hours={k: round(v, 2) for k, v in hours.items()},
                not_measured=missing,
            ),
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
