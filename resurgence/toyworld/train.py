"""Train every toy model from scratch and write the manifest the study checks against.

Profiles set the budget: ``gpu`` (one H100, minutes: the shipped weights), ``cpu`` (the same
recipe shrunk for a CPU-only machine; slower to converge) and ``smoke`` (seconds; tests only,
its models do not pass the quality gates).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from resurgence.io import write_json
from resurgence.layout import MANIFEST
from resurgence.state import file_sha256
from resurgence.toyworld.manifest import read_manifest, trained_knowledge

log = logging.getLogger(__name__)

MODELS = ("t2i", "clip", "detector", "segmenter")

# Overrides of each trainer's config dataclass per profile; the dataclass defaults are the GPU run.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "gpu": {"t2i": {}, "clip": {}, "detector": {}, "segmenter": {}},
    # A 2-core CPU budget (minutes for the small models); the text-to-image model needs a GPU to
    # reach the quality gates and its CPU budget here only makes it runnable.
    "cpu": {
        "t2i": dict(
            n_train_images=30_000,
            render_workers=2,
            vae_steps=600,
            vae_batch_size=16,
            unet_steps=3_000,
            unet_batch_size=64,
            checkpoint_every=250,
            log_every=50,
            warmup_steps=100,
            compile=False,
            unet_time_budget_s=None,
        ),
        "clip": dict(
            n_train=20_000,
            steps=800,
            batch_size=128,
            render_workers=2,
            bf16=False,
            checkpoint_every=200,
            text_calibration=dict(steps=200, batch_size=128),
        ),
        "detector": dict(
            n_identity=12_000,
            n_other=6_000,
            steps=1_000,
            batch_size=128,
            render_workers=2,
            bf16=False,
            checkpoint_every=250,
        ),
        "segmenter": dict(
            n_train=12_000, steps=800, batch_size=64, render_workers=2, bf16=False, checkpoint_every=200
        ),
    },
    "smoke": {
        "t2i": dict(
            n_train_images=256,
            render_workers=1,
            tokenizer_captions=500,
            vae_steps=4,
            vae_batch_size=8,
            unet_steps=4,
            unet_batch_size=8,
            checkpoint_every=2,
            log_every=1,
            n_samples=0,
            warmup_steps=1,
            compile=False,
            unet_time_budget_s=None,
        ),
        "clip": dict(
            n_train=512,
            n_val_objects=64,
            n_val_identities=64,
            steps=3,
            batch_size=32,
            render_workers=1,
            bf16=False,
            warmup=1,
            text_calibration=dict(steps=2, batch_size=32, warmup=1),
        ),
        "detector": dict(
            n_identity=512,
            n_other=256,
            n_val=64,
            steps=3,
            batch_size=32,
            render_workers=1,
            bf16=False,
            warmup=1,
        ),
        "segmenter": dict(
            n_train=256, n_val=32, steps=3, batch_size=16, render_workers=1, bf16=False, warmup=1
        ),
    },
}


def _configs(profile: str, seed: int, knowledge: Any = None) -> dict[str, Any]:
    from resurgence.toyworld.clip import ToyClipTrainConfig
    from resurgence.toyworld.detector import DetectorTrainConfig, SegmenterTrainConfig
    from resurgence.toyworld.t2i import T2ITrainConfig

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    classes = {
        "t2i": T2ITrainConfig,
        "clip": ToyClipTrainConfig,
        "detector": DetectorTrainConfig,
        "segmenter": SegmenterTrainConfig,
    }
    out = {}
    for name, cls in classes.items():
        overrides = {
            k: v for k, v in PROFILES[profile][name].items() if k in {f.name for f in dataclasses.fields(cls)}
        }
        fields = {f.name for f in dataclasses.fields(cls)}
        shared = {"knowledge": knowledge} if knowledge is not None and "knowledge" in fields else {}
        out[name] = cls(**{**overrides, **shared, "seed": seed})
    return out


def model_files(root: str | os.PathLike) -> dict[str, str]:
    """Every shipped file under the model folders (checkpoints excluded) -> its sha256."""
    root = Path(root)
    files = {}
    for name in MODELS:
        for p in sorted((root / name).rglob("*")):
            if p.is_file():
                files[str(p.relative_to(root))] = file_sha256(p)
    return files


def verify_manifest(root: str | os.PathLike) -> list[str]:
    """Files whose sha256 differs from the manifest (empty when the weights are intact)."""
    root = Path(root)
    manifest = json.loads((root / MANIFEST).read_text())
    bad = []
    for rel, digest in manifest["files"].items():
        p = root / rel
        if not p.exists() or file_sha256(p) != digest:
            bad.append(rel)
    return bad


def train_all(
    out_dir: str | os.PathLike,
    profile: str = "gpu",
    only: list[str] | None = None,
    seed: int = 0,
    device: str = "cuda",
    knowledge: Any = None,
    calibration_sets: dict[str, list[str]] | None = None,
    exclude: tuple[str, ...] = (),
    unet_steps: int | None = None,
    clip_knowledge_weight: float | None = None,
    clip_knowledge_balance: str | None = None,
) -> dict[str, Any]:
    """Train the toy models (all, or ``only`` some) and (re)write ``out_dir/manifest.json``.

    ``knowledge`` (a `KnowledgeConfig`; default its defaults) is the concept geometry both the text
    encoder and CLIP learn; with ``calibration_sets`` (erase set per domain) the manifest records its
    calibration statistics (`record_geometry`). ``exclude``: concepts the text-to-image model never
    sees (the exact-unlearning control). ``unet_steps`` fixes the UNet's step count instead of its
    time budget (a variant replays the shipped model's count, whatever else shares the GPU).
    ``clip_knowledge_weight`` and ``clip_knowledge_balance`` override CLIP's knowledge Gram-loss weight
    (`choose_clip_knowledge_weight`) and how it averages its pairs (`clip.knowledge_gram_loss`).
    """
    from resurgence.toyworld.clip import train_clip
    from resurgence.toyworld.concepts import toy_world
    from resurgence.toyworld.detector import train_detector, train_segmenter
    from resurgence.toyworld.t2i import train_text_to_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = toy_world(seed)
    cfgs = _configs(profile, seed, knowledge)
    cfgs["t2i"] = dataclasses.replace(cfgs["t2i"], exclude=tuple(exclude))
    if unet_steps is not None:
        cfgs["t2i"] = dataclasses.replace(cfgs["t2i"], unet_steps=unet_steps, unet_time_budget_s=None)
    if clip_knowledge_weight is not None:
        cfgs["clip"] = dataclasses.replace(cfgs["clip"], knowledge_weight=clip_knowledge_weight)
    if clip_knowledge_balance is not None:
        cfgs["clip"] = dataclasses.replace(cfgs["clip"], knowledge_balance=clip_knowledge_balance)
    trainers = {
        "t2i": train_text_to_image,
        "clip": train_clip,
        "detector": train_detector,
        "segmenter": train_segmenter,
    }
    for name in only or MODELS:
        t0 = time.time()
        log.info("training %s (profile %s, seed %d) on %s", name, profile, seed, device)
        metrics = trainers[name](cfgs[name], world, out, device=device)
        record_model(
            out, name, dataclasses.asdict(cfgs[name]), metrics, profile, str(device), time.time() - t0
        )
    if calibration_sets and all((out / m).is_dir() for m in ("t2i", "clip")):
        record_geometry(out, calibration_sets, device)
    return read_manifest(out)


def record_geometry(
    out_dir: str | os.PathLike, erase_sets: dict[str, list[str]], device: str = "cpu"
) -> dict[str, Any]:
    """Measure the calibration statistics of the trained text encoder and CLIP in ``out_dir`` and store
    them in its manifest under ``geometry`` (`geometry.geometry_report`)."""
    from resurgence.models.clip import load_clip
    from resurgence.models.pipeline import load_pipeline
    from resurgence.toyworld.concepts import toy_world
    from resurgence.toyworld.geometry import geometry_report
    from resurgence.toyworld.knowledge import KnowledgeConfig

    out = Path(out_dir)
    manifest = read_manifest(out)
    learned = trained_knowledge(out)
    if len(learned) < 2 or learned["t2i"] != learned["clip"]:
        raise ValueError(
            f"{out}: the text encoder and CLIP were trained on different knowledge geometries: {learned}"
        )
    cfg = KnowledgeConfig.from_dict(learned["t2i"])
    pipe = load_pipeline(out / "t2i", device=device)
    clip = load_clip({"kind": "toy", "path": str(out / "clip")}, device=device)
    world = toy_world(int(manifest["models"]["t2i"]["seed"] or 0))
    manifest["geometry"] = geometry_report(world, cfg, erase_sets, clip=clip, pipe=pipe)
    write_json(out / MANIFEST, manifest)
    return manifest["geometry"]


def calibrate_clip_text(
    out_dir: str | os.PathLike,
    text_calibration: Any,
    calibration_sets: dict[str, list[str]] | None = None,
    device: str = "cpu",
    render_workers: int | None = None,
) -> dict[str, Any]:
    """Apply `clip.calibrate_text_tower` (``text_calibration``, a `TextCalibrationConfig`) to the CLIP trained
    in ``out_dir``, re-enter it in the manifest (its training's provenance kept under ``metrics.trained``)
    and, with ``calibration_sets``, measure the calibration statistics again. Returns the CLIP's metrics."""
    from resurgence.toyworld.clip import calibrate_trained_clip
    from resurgence.toyworld.concepts import toy_world
    from resurgence.toyworld.knowledge import KnowledgeConfig

    out = Path(out_dir)
    manifest = read_manifest(out)
    entry = manifest["models"]["clip"]
    seed = int(entry["seed"] or 0)
    cfg = _configs(entry["profile"], seed, KnowledgeConfig.from_dict(entry["config"]["knowledge"]))["clip"]
    # as JSON (tuples are lists there); a setting the manifest lacks is one added since, whose default is
    # the training as it was
    mine = json.loads(json.dumps(dataclasses.asdict(cfg)))
    differ = sorted(
        k
        for k, v in entry["config"].items()
        if k not in ("render_workers", "text_calibration") and mine.get(k) != v
    )
    if differ:
        raise ValueError(
            f"{out}: the CLIP was trained with other settings than this code's defaults: {differ}"
        )
    cfg = dataclasses.replace(
        cfg, text_calibration=text_calibration, render_workers=render_workers or cfg.render_workers
    )
    t0 = time.time()
    metrics = calibrate_trained_clip(cfg, toy_world(seed), out, device=device)
    metrics["trained"] = {k: entry.get(k) for k in ("device", "gpu", "host", "torch", "wall_s", "profile")}
    record_model(out, "clip", dataclasses.asdict(cfg), metrics, entry["profile"], device, time.time() - t0)
    if calibration_sets:
        record_geometry(out, calibration_sets, device)
    return metrics


def choose_clip_knowledge_weight(runs: dict[float, dict[str, Any]], zero_shot_gate: float) -> float | None:
    """The smallest CLIP knowledge Gram-loss weight among ``runs`` (weight -> that run's manifest) whose
    trained CLIP puts every domain's App. C.2 statistic inside the paper's range and keeps held-out
    zero-shot top-1 of both domains at ``zero_shot_gate`` or more; None if none does.

    The smallest weight pulls CLIP least away from its contrastive objective. The choice reads the
    calibration statistics and CLIP's own accuracy only, never any resurgence measurement.
    """
    for weight in sorted(runs):
        manifest = runs[weight]
        geometry = manifest.get("geometry", {}).get("clip", {})
        metrics = manifest["models"]["clip"]["metrics"]
        inside = bool(geometry) and all(d["inside_paper_range"] for d in geometry.values())
        accurate = all(metrics[f"{kind}_zero_shot_top1"] >= zero_shot_gate for kind in ("identity", "object"))
        if inside and accurate:
            return weight
    return None


def record_model(
    out_dir: str | os.PathLike,
    name: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    profile: str,
    device: str,
    wall_s: float,
    gpu: str | None = None,
    host: str | None = None,
) -> None:
    """Enter one trained model into ``out_dir/manifest.json`` with its provenance, and rehash every file."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    if gpu is None and device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    manifest["models"][name] = dict(
        config=config,
        metrics=metrics,
        profile=profile,
        seed=config.get("seed"),
        device=device,
        gpu=gpu,
        host=host or platform.node(),
        torch=torch.__version__,
        wall_s=round(wall_s, 1),
    )
    manifest["files"] = model_files(out)
    write_json(out / MANIFEST, manifest)


def import_models(
    src_dir: str | os.PathLike, dst_dir: str | os.PathLike, names: list[str] | None = None
) -> list[str]:
    """Copy trained models (e.g. from a GPU machine's run) into ``dst_dir`` with their manifest entries.

    Each model folder is replaced whole (written beside, then renamed); the manifest keeps the
    source's provenance for the imported models and is rehashed. Returns the imported names.
    """
    import shutil

    from resurgence.io import atomic_path

    src, dst = Path(src_dir), Path(dst_dir)
    src_manifest = json.loads((src / MANIFEST).read_text())
    names = names or [n for n in MODELS if n in src_manifest["models"]]
    missing = [n for n in names if n not in src_manifest["models"] or not (src / n).is_dir()]
    if missing:
        raise FileNotFoundError(f"{src} holds no trained {missing} (manifest entry and folder needed)")
    dst.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(dst)
    for name in names:
        with atomic_path(dst / name, is_dir=True) as tmp:
            shutil.copytree(src / name, tmp, dirs_exist_ok=True)
        manifest["models"][name] = src_manifest["models"][name]
    manifest["files"] = model_files(dst)
    write_json(dst / MANIFEST, manifest)
    return names


def record_quality(out_dir: str | os.PathLike, quality: dict[str, Any]) -> None:
    """Store the quality gates measured on the shipped models (``quality.json``) in the manifest."""
    manifest = read_manifest(out_dir)
    keep = (
        "gates",
        "all_pass",
        "t2i_identity_by_template",
        "t2i_object_by_template",
        "t2i_identity_images",
        "t2i_object_images",
        "generation",
        "device",
        "host",
    )
    manifest["quality"] = {k: quality[k] for k in keep if k in quality}
    write_json(Path(out_dir) / MANIFEST, manifest)
