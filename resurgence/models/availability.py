"""Are a real (sd14, sd21) world's models and inputs on this machine? Checked without the network.

A study never downloads behind the user's back (every loader passes ``local_files_only``), so a
missing model would otherwise surface as a failed job hours into a run. `check_available` runs
when the study is resolved (`resurgence.study.check_study`) and stops it before any job with ONE
message listing everything missing, each line naming the config key and how to get the model.

A model is present when a local folder holds its expected files, or its hub id is in the Hugging
Face cache (`huggingface_hub.try_to_load_from_cache`: reads the cache, never the network), or for
open_clip, its weights file is in open_clip's cache.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resurgence.config import ConfigError
from resurgence.world import REAL_WORLDS

# What to fetch for each real world's pipeline, named in the message when it is missing.
PIPELINE_SOURCES = {
    "sd14": "CompVis/stable-diffusion-v1-4",
    "sd21": "stabilityai/stable-diffusion-2-1-base (512 px) or stabilityai/stable-diffusion-2-1 (768 px)",
}

# Files a diffusers Stable-Diffusion folder needs; a tuple is "any one of these".
PIPELINE_FILES: tuple[str | tuple[str, ...], ...] = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    # The hub's folder holds the slow tokenizer's vocab.json + merges.txt; transformers >= 5 saves tokenizer.json.
    ("tokenizer/vocab.json", "tokenizer/tokenizer.json"),
    "text_encoder/config.json",
    ("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin"),
    "unet/config.json",
    ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"),
    "vae/config.json",
    ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"),
)
# Files a transformers model folder needs (Grounding DINO, SAM).
TRANSFORMERS_FILES: tuple[str | tuple[str, ...], ...] = (
    "config.json",
    (
        "preprocessor_config.json",
        "processor_config.json",
    ),  # the hub's layout; transformers >= 5 saves the second
    (
        "model.safetensors",
        "pytorch_model.bin",
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    ),
)
# The Giphy Celebrity Detector's `resources/` folder (github.com/Giphy/celeb-detection-oss,
# examples/.env.example and model_training/preprocessors/face_detection/network.py).
GCD_FILES: tuple[str, ...] = (
    "face_recognition/labels.csv",
    "face_recognition/best_model_states.pkl",
    "face_detection/det1.npy",
    "face_detection/det2.npy",
    "face_detection/det3.npy",
)
# The toy models' marker files (resurgence.study.TOY_MODEL_FILES, per model folder).
TOY_FILES = {
    "clip": ("open_clip_config.json",),
    "detector": ("detector.json",),
    "segmenter": ("segmenter.json",),
}

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
GCD_HOWTO = (
    "download resources.tar.gz of the Giphy Celebrity Detector (github.com/Giphy/celeb-detection-oss, "
    "examples/download_model.py, or the copy linked in github.com/Shilin-LU/MACE/tree/main/metrics) and "
    "extract it so that this folder holds face_recognition/ and face_detection/"
)


def hub_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.environ[var]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _missing_in_folder(folder: Path, files: Sequence[str | tuple[str, ...]]) -> list[str]:
    missing = []
    for entry in files:
        options = (entry,) if isinstance(entry, str) else entry
        if not any((folder / f).is_file() for f in options):
            missing.append(" or ".join(options))
    return missing


def _missing_in_cache(
    repo_id: str, files: Sequence[str | tuple[str, ...]], cache_dir: str | None = None
) -> list[str]:
    from huggingface_hub import try_to_load_from_cache

    cache_dir = cache_dir or hub_cache_dir()
    missing = []
    for entry in files:
        options = (entry,) if isinstance(entry, str) else entry
        found = False
        for f in options:
            try:
                hit = try_to_load_from_cache(repo_id, f, cache_dir=cache_dir)
            except Exception:  # a malformed id or cache: treat as absent
                hit = None
            if isinstance(hit, str) and Path(hit).is_file():
                found = True
                break
        if not found:
            missing.append(" or ".join(options))
    return missing


def _check_source(key: str, source: str, files: Sequence[str | tuple[str, ...]], what: str) -> str | None:
    """A local folder with ``files``, or a hub id whose ``files`` are all in the HF cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        missing = _missing_in_folder(path, files)
        if not missing:
            return None
        return f"{key}: local {what} folder {str(path)!r} lacks {', '.join(missing)}"
    if HUB_ID.match(source):
        missing = _missing_in_cache(source, files)
        if not missing:
            return None
        cached_some = len(missing) < len(files)
        state = (
            f"is only partly in the Hugging Face cache (lacks {', '.join(missing)})"
            if cached_some
            else (f"is neither a local folder nor in the Hugging Face cache ({hub_cache_dir()})")
        )
        return (
            f"{key}: {what} {source!r} {state}; get it with `huggingface-cli download {source}` "
            f"(or `hf download {source}`) on a machine with internet access, or set {key} to a local folder"
        )
    return f"{key}: {what} folder {str(path)!r} does not exist (nor is it a Hugging Face hub id)"


def _check_open_clip(key: str, spec: Mapping[str, Any]) -> str | None:
    model, pretrained, cache_dir = spec.get("model"), spec.get("pretrained"), spec.get("cache_dir")
    howto = (
        f"get it with `python -c \"import open_clip; open_clip.create_model('{model}', pretrained='{pretrained}'"
        + (f", cache_dir='{cache_dir}'" if cache_dir else "")
        + ')"` on a machine with internet access (or set pretrained to a downloaded weights file)'
    )
    if not model or not pretrained:
        return f"{key}: an open_clip spec needs 'model' and 'pretrained' (e.g. model: ViT-L-14, pretrained: openai)"
    p = str(pretrained)
    if os.path.sep in p or Path(p).suffix in {".bin", ".pt", ".pth", ".safetensors"}:
        return (
            None if Path(p).expanduser().is_file() else f"{key}: open_clip weights file {p!r} does not exist"
        )
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, p)
    if not cfg:
        return f"{key}: open_clip knows no pretrained tag {p!r} for model {model!r} (see open_clip.list_pretrained())"
    if cfg.get("file") and Path(cfg["file"]).is_file():
        return None
    hub = cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        names = (filename,) if filename else ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
        if not _missing_in_cache(repo_id, [names], cache_dir):
            return None
    url = cfg.get("url", "")
    if url:
        root = Path(cache_dir).expanduser() if cache_dir else Path("~/.cache/clip").expanduser()
        if (root / os.path.basename(url)).is_file():
            return None
    where = f"Hugging Face cache ({cache_dir or hub_cache_dir()})" + (
        " or ~/.cache/clip" if url and not cache_dir else ""
    )
    return f"{key}: open_clip {model} ({p}) weights are not in the {where}; {howto}"


def _check_toy(key: str, spec: Mapping[str, Any], name: str) -> str | None:
    path = Path(str(spec.get("path", ""))).expanduser()
    missing = _missing_in_folder(path, TOY_FILES[name]) if path.is_dir() else list(TOY_FILES[name])
    return f"{key}: toy {name} folder {str(path)!r} lacks {', '.join(missing)}" if missing else None


def missing_models(config: Mapping[str, Any]) -> list[str]:
    """One human-readable line per configured model of a real world that is not on this machine."""
    if config.get("world") not in REAL_WORLDS:
        return []
    models = config.get("models") or {}
    lines: list[str] = []

    pipeline = models.get("pipeline")
    if not pipeline:
        lines.append(
            f"models.pipeline: not set; use {PIPELINE_SOURCES[config['world']]} (hub id) or a local diffusers folder"
        )
    else:
        lines.append(_check_source("models.pipeline", str(pipeline), PIPELINE_FILES, "diffusers pipeline"))

    clip = models.get("clip")
    if not clip:
        lines.append("models.clip: not set; use {kind: open_clip, model: ViT-L-14, pretrained: openai}")
    elif clip.get("kind", "toy") == "toy":
        lines.append(_check_toy("models.clip", clip, "clip"))
    else:
        lines.append(_check_open_clip("models.clip", clip))

    detector = models.get("detector")
    if not detector:
        lines.append(f"models.detector: not set; use {{kind: gcd, path: DIR}} and {GCD_HOWTO}")
    elif detector.get("kind", "toy") == "toy":
        lines.append(_check_toy("models.detector", detector, "detector"))
    elif detector.get("kind") == "clip_zero_shot":
        pass  # needs only models.clip, checked above
    else:
        path = Path(str(detector.get("path", ""))).expanduser()
        missing = _missing_in_folder(path, GCD_FILES) if path.is_dir() else None
        if missing is None:
            lines.append(
                f"models.detector: Giphy Celebrity Detector folder {str(path)!r} does not exist; {GCD_HOWTO}"
            )
        elif missing:
            lines.append(
                f"models.detector: Giphy Celebrity Detector folder {str(path)!r} lacks {', '.join(missing)}; {GCD_HOWTO}"
            )

    segmenter = models.get("segmenter")
    if not segmenter:
        lines.append(
            "models.segmenter: not set; use {kind: grounded_sam, dino_id_or_path: ..., sam_id_or_path: ...}"
        )
    elif segmenter.get("kind", "toy") == "toy":
        lines.append(_check_toy("models.segmenter", segmenter, "segmenter"))
    else:
        # Keys are GroundedSAMSegmenter's arguments (resurgence.models.segment), with its defaults.
        dino = str(segmenter.get("dino_id_or_path", "IDEA-Research/grounding-dino-base"))
        sam = str(segmenter.get("sam_id_or_path", "facebook/sam-vit-huge"))
        lines.append(
            _check_source("models.segmenter.dino_id_or_path", dino, TRANSFORMERS_FILES, "Grounding DINO")
        )
        lines.append(_check_source("models.segmenter.sam_id_or_path", sam, TRANSFORMERS_FILES, "SAM"))
    return [line for line in lines if line]


def _needs_captions(config: Mapping[str, Any]) -> bool:
    caps = config["evaluation"]["captions"]
    domains = set(caps.get("domains", ["identity"]))
    if any(t["domain"] in domains for t in config["tasks"].values()):
        return True
    settings = [*config["erase_defaults"].values(), *config["erase_variants"].values()]
    return any(int((s or {}).get("preserve_captions", 0)) > 0 for s in settings)


def missing_inputs(config: Mapping[str, Any]) -> list[str]:
    """The user-supplied caption file (COCO captions, one per line) when the study reads captions."""
    if config.get("world") not in REAL_WORLDS or not _needs_captions(config):
        return []
    path = config["evaluation"]["captions"].get("file")
    fmt = "a UTF-8 text file with one caption per line (e.g. COCO captions; see config.sd14.yaml)"
    if not path:
        return [f"evaluation.captions.file: not set; point it to {fmt}"]
    if not Path(path).expanduser().is_file():
        return [f"evaluation.captions.file: {path!r} does not exist; supply {fmt}"]
    return []


def check_available(config: Mapping[str, Any]) -> None:
    """Raise one `ConfigError` listing every missing model and input of a real-world study (no-op otherwise)."""
    lines = missing_models(config) + missing_inputs(config)
    if lines:
        raise ConfigError(
            f"the {config['world']} study cannot start: {len(lines)} model(s)/input(s) are not on this machine "
            "(nothing is downloaded at run time):\n  - " + "\n  - ".join(lines)
        )
