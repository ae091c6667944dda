"""One function per study stage: load what the stage needs, call the package, write its artifacts.

`resurgence.cli` parses arguments and calls `run_<stage>(args)`; every artifact is written
atomically by the functions called here.
"""

from __future__ import annotations

import json
import logging
from argparse import Namespace
from pathlib import Path
from typing import Any

import torch

from resurgence import layout
from resurgence.phases import LOAD, SCORE, TRAIN, WRITE, in_phase, phase
from resurgence.world import get_world

log = logging.getLogger("resurgence")


def pick_device(name: str = "auto") -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available; set device: auto or cpu")
    return name


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_study_pipeline(models: dict[str, Any], device: str, erasure: str | None = None):
    """The base pipeline, with an erasure fused in when given."""
    from resurgence.models.pipeline import load_pipeline

    pipe = load_pipeline(models["pipeline"], device=device, dtype=DTYPES[models.get("dtype", "float32")])
    if erasure:
        from resurgence.erasure.artifact import apply_erasure

        apply_erasure(pipe, erasure)
    return pipe


def generation_config(settings: dict[str, Any]):
    from resurgence.generate.engine import GenerationConfig

    return GenerationConfig(**settings)


def erase_generation_config(settings: dict[str, Any], dtype: str):
    """How MACE's training images are sampled: in the erased model's dtype, never compiled.

    Generating in another dtype would cast the pipeline in place, so the LoRAs would train in that
    dtype; and a few images per concept from a UNet that changes between concepts only pay for a compile
    (and the compiled UNet would then also run MACE's LoRA training).
    """
    return generation_config({**settings, "dtype": dtype, "compile": "none"})


@in_phase(LOAD)
def load_segmenter(models: dict[str, Any], device: str):
    from resurgence.models.segment import GroundedSAMSegmenter
    from resurgence.toyworld.detector import ToySegmenter

    spec = models["segmenter"]
    if spec["kind"] == "toy":
        return ToySegmenter.load(spec["path"], device=device)
    return GroundedSAMSegmenter(**{k: v for k, v in spec.items() if k != "kind"}, device=device)


# ----------------------------------------------------------------------------- toy world


def run_toyworld(args: Namespace) -> None:
    if args.action == "train":
        from resurgence.toyworld.knowledge import KnowledgeConfig
        from resurgence.toyworld.train import train_all

        device = pick_device(args.device)
        profile = ("gpu" if device.startswith("cuda") else "cpu") if args.profile == "auto" else args.profile
        train_all(
            args.out_dir,
            profile=profile,
            only=args.only,
            seed=args.seed,
            device=device,
            knowledge=KnowledgeConfig.from_dict(args.knowledge),
            calibration_sets=args.calibration,
            exclude=tuple(args.exclude),
            unet_steps=args.unet_steps,
            clip_knowledge_weight=args.clip_knowledge_weight,
            clip_knowledge_balance=args.clip_knowledge_balance,
        )
    else:
        from resurgence.toyworld.quality import measure_quality

        measure_quality(
            args.models,
            args.generation,
            out=args.out,
            seed=args.seed,
            images=args.images,
            device=pick_device(args.device),
            concepts=args.concepts,
        )


# ----------------------------------------------------------------------------- erase


def run_erase(args: Namespace) -> None:
    from resurgence.erasure.artifact import ConceptSpec, no_erasure, save_erasure
    from resurgence.mace.config import EraseConfig
    from resurgence.mace.erase import erase_concepts
    from resurgence.mace.images import concept_image_source

    device = pick_device(args.device)
    spec = args.spec
    world = get_world(spec["world"])
    pipe = load_study_pipeline(args.models, device)
    method = spec.get("method", "mace")  # a MACE spec names no method (its artifacts predate the others)
    if method == "none":
        save_erasure(no_erasure(pipe.unet, spec), args.out_dir)
        return
    concepts = []
    for c in spec["concepts"]:
        concept = world.concept(c["name"])
        concepts.append(
            ConceptSpec(
                name=concept.name, prompts=tuple(world.eval_prompts(concept)), phrases=tuple(concept.names)
            )
        )
    if method == "esd":
        import shutil

        from resurgence.erasure import esd

        state = Path(args.out_dir) / layout.CHECKPOINTS
        cfg = esd.ESDConfig.from_dict(spec["esd"])
        with phase(TRAIN):
            erasure = esd.erase_concepts(
                pipe, concepts, cfg, device, state_dir=state, model_key=weights_key(args.models)
            )
        erasure.report["spec"] = spec
        save_erasure(erasure, args.out_dir)
        shutil.rmtree(state, ignore_errors=True)  # the erasure is written: its training state is spent
        return
    if method == "uce":
        from resurgence.erasure import uce

        guides = {c["name"]: c["mapping"] for c in spec["concepts"]}
        with phase(TRAIN):
            erasure = uce.erase_concepts(pipe, concepts, guides, uce.UCEConfig.from_dict(spec["uce"]), device)
        erasure.report["spec"] = spec
        save_erasure(erasure, args.out_dir)
        return
    segmenter = load_segmenter(args.models, device)
    gen_cfg = erase_generation_config(args.generation, args.models.get("dtype", "float32"))
    cfg = EraseConfig.from_dict(spec["mace"])  # the spec is complete: no preset defaults are filled in here
    # Images of the concepts drawn by the model being erased, with the segmenter's masks (as MACE does).
    image_source = concept_image_source(
        pipe,
        {c.name: c.prompts for c in concepts},
        gen_cfg,
        lambda name, images: segmenter.segment(images, name),
        device,
    )
    with phase(TRAIN):  # its training images' sampling counts as sampling (`generate`)
        erasure = erase_concepts(pipe, concepts, cfg, image_source, device=device)
    erasure.report["spec"] = spec
    save_erasure(erasure, args.out_dir)


# ----------------------------------------------------------------------------- fine-tune data


def concept_similarity(models: dict[str, Any], device: str):
    """CLIP text-embedding cosine similarity between concept names (the paper's CLIP distance)."""
    from resurgence.models.clip import load_clip

    clip = load_clip(models["clip"], device=device)
    return clip.similarity


def run_ftdata(args: Namespace) -> None:
    from resurgence.finetune.data import build_finetune_set, select_tercile_concepts

    device = pick_device(args.device)
    spec = args.spec
    world = get_world(args.world)
    selection = None
    if spec["kind"] == "tercile":
        selection = select_tercile_concepts(
            spec["candidates"],
            spec["erased"],
            concept_similarity(args.models, device),
            spec["n_concepts"],
            spec["seed"],
        )
        names = selection["terciles"][spec["tercile"]]
    else:
        names = spec["concepts"]
    pairs = [(n, p) for n in names for p in world.eval_prompts(world.concept(n))]
    pipe = load_study_pipeline(args.models, device)
    build_finetune_set(
        pipe,
        [p for _, p in pairs],
        concepts=[n for n, _ in pairs],
        images_per_prompt=spec["images_per_prompt"],
        seed=spec["seed"],
        gen_cfg=generation_config(args.generation),
        out_dir=args.out_dir,
        device=device,
        extra_manifest={"spec": spec, "concepts": names, "selection": selection},
        model_key=weights_key(args.models),
    )


# ----------------------------------------------------------------------------- fine-tune


def run_finetune(args: Namespace) -> None:
    from resurgence.finetune.config import FinetuneConfig
    from resurgence.finetune.train import finetune

    device = pick_device(args.device)
    pipe = load_study_pipeline(args.models, device, erasure=args.erasure)
    model_key = weights_key(args.models, erasure=args.erasure)
    with phase(TRAIN):
        finetune(
            pipe,
            args.data,
            FinetuneConfig.from_dict(args.spec),
            args.out_dir,
            device=device,
            model_key=model_key,
        )


# ----------------------------------------------------------------------------- generate


def checkpoint_dir(finetune_dir: str | Path, step: int) -> Path:
    """The kept checkpoint of a fine-tune run at ``step`` (the final weights at the last step)."""
    log_ = json.loads((Path(finetune_dir) / layout.TRAIN_LOG).read_text())
    if step >= int(log_["config"]["steps"]):
        return Path(finetune_dir) / layout.FINAL
    ckpt = layout.checkpoint_path(finetune_dir, step)
    if not ckpt.exists():
        raise FileNotFoundError(
            f"{ckpt} missing: set finetune checkpoint_every to divide the trajectory steps"
        )
    return ckpt


def pipeline_folder(source: str) -> Path | None:
    """The local folder a pipeline source loads from: itself, or a hub id's snapshot in the HF cache."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception:  # not a hub id, or not in the cache: nothing on disk to key
        return None


def weights_key(
    models: dict[str, Any], erasure: str | None = None, finetune: str | None = None, step: int | None = None
) -> str:
    """The identity of the weights a job starts from (`generate_to_dir`'s ``model_key``, `finetune`'s
    ``model_key``): the model specs, and the content digests of the base pipeline, of the erased LoRA and
    of the fine-tuned weights at ``step``, so that images and checkpoints of other weights are never reused."""
    from resurgence.erasure.artifact import DENSE_FILE
    from resurgence.finetune.train import TRAINING_STATE
    from resurgence.state import content_digest

    base = pipeline_folder(str(models["pipeline"])) if models.get("pipeline") else None
    digests = {"pipeline": content_digest(base) if base else None}
    if erasure:
        digests["erasure"] = content_digest(Path(erasure) / layout.ERASED_LORA)
        if (Path(erasure) / DENSE_FILE).is_file():  # a dense edit (ESD): the LoRA alone is empty
            digests["erasure_dense"] = content_digest(Path(erasure) / DENSE_FILE)
    if finetune:
        digests["finetune"] = content_digest(checkpoint_dir(finetune, step), ignore=(TRAINING_STATE,))
    return json.dumps([models, step, digests], sort_keys=True, default=str)


def run_generate(args: Namespace) -> None:
    from resurgence.study import expand_records

    spec = args.spec
    records = expand_records(spec)
    out = Path(args.out_dir)
    if args.pool:  # a base state: the shared pool's images (study.base_pool_spec), nothing rendered
        from resurgence.generate.engine import copy_from_pool

        copy_from_pool(records, args.pool, out)
    else:
        from resurgence.finetune.train import load_finetuned
        from resurgence.generate.engine import generate_to_dir

        device = pick_device(args.device)
        pipe = load_study_pipeline(args.models, device, erasure=args.erasure)
        if args.finetune:
            load_finetuned(pipe, checkpoint_dir(args.finetune, args.step))
        model_key = weights_key(args.models, erasure=args.erasure, finetune=args.finetune, step=args.step)
        generate_to_dir(
            pipe, records, generation_config(spec["generation"]), out, device=device, model_key=model_key
        )
    write_state_grid(records, spec["seeds"][0], out)


@in_phase(WRITE)
def write_state_grid(records: list[dict[str, Any]], seed: int, out: Path) -> None:
    """A grid for people: ``seed``'s images, up to 8 concepts (rows) x their prompts (columns); the
    captions' first 8 where the state has no concept images."""
    from PIL import Image

    from resurgence.generate.grid import save_grid

    rows = [r for r in records if r["role"] != "caption" and r["seed"] == seed and not r.get("sample")]
    concepts = list(dict.fromkeys(r["concept"] for r in rows))[:8]
    index = [json.loads(line) for line in (out / layout.IMAGES_INDEX).read_text().splitlines()]
    by_key = {(r["prompt"], r["seed"]): r["file_name"] for r in index if not r.get("sample")}
    cells, labels = [], []
    ncols = max(sum(1 for r in rows if r["concept"] == c) for c in concepts) if concepts else 1
    for c in concepts:
        mine = [r for r in rows if r["concept"] == c][:ncols]
        for r in mine:
            cells.append(Image.open(out / by_key[(r["prompt"], r["seed"])]).convert("RGB"))
        cells += [Image.new("RGB", cells[0].size, "white")] * (ncols - len(mine))
        labels.append(c)
    if not cells:
        caps = [r for r in index if r["role"] == "caption"][:8]
        cells = [Image.open(out / r["file_name"]).convert("RGB") for r in caps]
        labels, ncols = ["captions"], max(1, len(cells))
    save_grid(cells, out / layout.IMAGES_GRID, rows=max(1, len(labels)), cols=ncols, labels=labels)


# ----------------------------------------------------------------------------- evaluate


def run_evaluate(args: Namespace) -> None:
    """Score one model state: the task's accuracy metric (with the true concept's probability and rank; and
    CLIP zero-shot's for identities) on concept images, CLIP score and FID on captions."""
    from PIL import Image

    from resurgence.evaluate.registry import get_evaluators, identity_metric
    from resurgence.metrics.tables import TIDY_COLUMNS, write_tidy

    device = pick_device(args.device)
    labels = args.labels
    world = get_world(labels["world"])
    images_dir, ref_dir = Path(args.images), Path(args.reference)

    def read(folder: Path, roles: tuple[str, ...]) -> tuple[list[dict[str, Any]], list[Any]]:
        index = [json.loads(x) for x in (folder / layout.IMAGES_INDEX).read_text().splitlines()]
        records = [r for r in index if r["role"] in roles]
        return records, [Image.open(folder / r["file_name"]).convert("RGB") for r in records]

    accuracy = identity_metric(args.models) if labels["domain"] == "identity" else "clip_acc"
    # Identities are also scored by CLIP zero-shot over the task's names: a second view of their presence.
    views = [accuracy] + (
        ["identity_acc_clip"] if labels["domain"] == "identity" and accuracy != "identity_acc_clip" else []
    )
    label_set = {n: list(world.concept(n).names) for n in labels["labels"]}
    with phase(LOAD):
        records, images = read(images_dir, ("erased", "retained"))
    if any(r.get("concept") and "template" not in r for r in records):
        raise ValueError(
            f"{images_dir / layout.IMAGES_INDEX} predates records that carry their prompt's template: "
            f"delete {images_dir} and rerun, so that its images are generated again"
        )
    # Captions: CLIP score per image, and FID of the set against the base model's caption images.
    with phase(LOAD):
        caps, cap_images = read(images_dir, ("caption",))
        caption_views = ["clip_score", "fid"] if caps else []
        reference = read(ref_dir, ("caption",))[1] if caps else None
        evaluators = get_evaluators(
            args.models, label_set=label_set, device=device, names=views + caption_views, reference=reference
        )
    with phase(SCORE):
        rows = [row for view in views for row in evaluators[view].evaluate(images, records)]
        for view in caption_views:
            # One caption set per state: its rows share the set's seed, so summaries average over captions.
            rows += [dict(r, seed=caps[0]["seed"]) for r in evaluators[view].evaluate(cap_images, caps)]
    state = dict(args.state, domain=labels["domain"])
    tidy = [
        {
            **state,
            **{k: r.get(k, "") for k in ("concept", "role", "prompt", "template", "seed", "metric", "value")},
        }
        for r in rows
    ]
    import pandas as pd

    write_tidy(pd.DataFrame(tidy, columns=list(TIDY_COLUMNS)), args.out)


# ----------------------------------------------------------------------------- reversion diagnostics


def run_reversion(args: Namespace) -> None:
    """How far each kept checkpoint and the final weights of one fine-tune run undo its erasure (`reversion`)."""
    import pandas as pd

    from resurgence.erasure.artifact import DENSE_FILE, apply_erasure, kv_weights, load_report
    from resurgence.finetune.train import list_checkpoints, load_finetuned
    from resurgence.mace.capacity import concept_token_states, eval_prompt_sets
    from resurgence.metrics.reversion import reversion
    from resurgence.metrics.tables import write_table

    device = pick_device(args.device)
    # Differences of weights are taken in float32 whatever the study samples in.
    pipe = load_study_pipeline({**args.models, "dtype": "float32"}, device)
    kv = list(kv_weights(pipe.unet))
    # Parameters a dense erasure (ESD) changed besides the key/value maps: measured too.
    dense_file = Path(args.erasure) / DENSE_FILE
    dense = []
    if dense_file.is_file():
        from safetensors import safe_open

        with safe_open(str(dense_file), "pt") as f:
            names = f.keys()
        dense = [n for n in names if n.removesuffix(".weight") not in kv]

    def weights_now() -> dict[str, torch.Tensor]:
        params = dict(pipe.unet.named_parameters())
        return {
            **kv_weights(pipe.unet, kv),
            **{n: params[n].detach().to("cpu", torch.float64).clone() for n in dense},
        }

    base = weights_now()
    apply_erasure(pipe, args.erasure)
    erased, erased_unet = weights_now(), {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    # The text states that carry each erased concept in its prompts: the rows MACE maps to the mapping concept
    # (`study.probe_mappings`: the same for every method of a task).
    spec = load_report(args.erasure)["spec"]
    prompts = eval_prompt_sets(get_world(spec["world"]), [c["name"] for c in spec["concepts"]])
    embeddings, _ = concept_token_states(pipe, prompts, args.mapping)
    final = int(json.loads((Path(args.finetune) / layout.TRAIN_LOG).read_text())["config"]["steps"])
    steps = sorted({s for s, _ in list_checkpoints(args.finetune) if s < final} | {final})
    rows = []
    for step in steps:
        pipe.unet.load_state_dict(erased_unet)
        load_finetuned(pipe, checkpoint_dir(args.finetune, step))
        ft = weights_now()
        with phase(SCORE):
            measures = reversion({n: (base[n], erased[n], ft[n]) for n in base}, embeddings, kv_layers=kv)
        for layer, values in measures.items():
            for measure, value in values.items():
                rows.append(
                    dict(
                        args.run, step=step, is_final=step == final, layer=layer, measure=measure, value=value
                    )
                )
    write_table(pd.DataFrame(rows), args.out, sort_by=["step", "layer", "measure"])


# ----------------------------------------------------------------------------- tables and figures


def run_tables(args: Namespace) -> None:
    from resurgence.metrics.tables import (
        Experiment,
        read_tidy,
        resurgence_rate,
        select,
        summarize,
        with_run_settings,
        write_summary,
        write_tidy,
    )

    exp = Experiment(name=args.experiment, figure=args.experiment, runs=args.runs)
    # Each row with its run's settings (`study.run_settings`): the figures read these, not variant names.
    tidy = with_run_settings(select(read_tidy(args.inputs), exp), args.runs)
    out = Path(args.out_dir)
    write_tidy(tidy, out / layout.TIDY)
    summary = summarize(tidy)
    write_summary(summary, out / layout.SUMMARY)
    write_summary(resurgence_rate(summary), out / layout.RESURGENCE)


def run_figure(args: Namespace) -> None:
    from resurgence.metrics.figures import FIGURES, TASK_FIGURES
    from resurgence.metrics.tables import read_summary

    extra = {"tasks": args.tasks} if args.name in TASK_FIGURES else {}
    FIGURES[args.name](read_summary(args.summary), args.out, **extra)


def run_reversion_summary(args: Namespace) -> None:
    """Every run's reversion measures beside its resurgence: a table and a figure."""
    import pandas as pd

    from resurgence.metrics.figures import fig_reversion
    from resurgence.metrics.reversion import reversion_table
    from resurgence.metrics.tables import read_tidy, resurgence_rate, write_table

    rows = pd.concat([pd.read_csv(p) for p in args.reversion], ignore_index=True)
    table = reversion_table(rows, resurgence_rate(read_tidy(args.metrics)))
    write_table(table, args.table)
    fig_reversion(table, args.figure)


def run_grids(args: Namespace) -> None:
    from resurgence.metrics.figures import image_grid_figure

    grids = {layout.images_label(p): p for p in args.inputs}
    image_grid_figure(grids, args.out)
