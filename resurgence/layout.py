"""Where every artifact of the study lives: the rules, the stages, the figures and the tools ask here.

Each path function gives a concrete path for concrete names and a Snakemake pattern for wildcards
(``erased_lora("{task}", "{erase}")``), so a rule's output and the code that reads it cannot disagree.
Torch-free: the Snakefile imports it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

RESULTS = "results"
LOGS = "logs"

# File names inside an artifact's folder.
ERASED_LORA = "erased_lora.safetensors"
ERASE_REPORT = "report.json"
MANIFEST = "manifest.json"
TRAIN_LOG = "train_log.json"
# Kept fine-tune checkpoints (``step-NNNNNN``) and the final weights, inside a fine-tune run's folder.
CHECKPOINTS = "checkpoints"
FINAL = "final"
IMAGES_INDEX = "index.jsonl"
IMAGES_GRID = "grid.png"
TIDY = "tidy.csv"
SUMMARY = "summary.csv"
RESURGENCE = "resurgence.csv"
REVERSION = "reversion.csv"

# A model state, the part of image and metric paths after the task: base, <erase>/erased, or
# <erase>/<fine-tune set>/<fine-tune method>/step-N.
STATE_PATTERN = r"base|[^/]+/erased|[^/]+/[^/]+/[^/]+/step-\d+"
_CHECKPOINT_NAME = re.compile(r"^step-(\d{6,})$")


# ----------------------------------------------------------------------------- model states


def state_id(stage: str, erase: str = "", ftset: str = "", ftmethod: str = "", step: int | str = "") -> str:
    """The model-state part of image and metric paths (``stage``: base, erased or finetuned)."""
    if stage == "base":
        return "base"
    if stage == "erased":
        return f"{erase}/erased"
    return f"{erase}/{ftset}/{ftmethod}/step-{step}"


def parse_state(task: str, state: str) -> dict[str, Any]:
    """Inverse of `state_id`: the tidy-table fields of a model state."""
    if not re.fullmatch(STATE_PATTERN, state):
        raise ValueError(f"not a model state: {state!r}")
    parts = state.split("/")
    if parts == ["base"]:
        return dict(task=task, erase="none", ftset="none", ftmethod="none", state="base", step=0)
    if len(parts) == 2:
        return dict(task=task, erase=parts[0], ftset="none", ftmethod="none", state="erased", step=0)
    return dict(
        task=task,
        erase=parts[0],
        ftset=parts[1],
        ftmethod=parts[2],
        state="finetuned",
        step=int(parts[3][5:]),
    )


# ----------------------------------------------------------------------------- artifacts


def erase_dir(task: str, erase: str) -> str:
    """An erasure's folder: its LoRA, its dense changes (ESD) and its report; ESD's training state while it runs."""
    return f"{RESULTS}/erase/{task}/{erase}"


def erased_lora(task: str, erase: str) -> str:
    """The erased model: a LoRA onto the base pipeline (`resurgence.erasure.artifact`)."""
    return f"{erase_dir(task, erase)}/{ERASED_LORA}"


def erase_report(task: str, erase: str) -> str:
    return f"{erase_dir(task, erase)}/{ERASE_REPORT}"


def random_ftset_dir(ftset: str) -> str:
    """A random fine-tune set: shared by every task."""
    return f"{RESULTS}/ftdata/random/{ftset}"


def tercile_ftset_dir(task: str, ftset: str) -> str:
    """A CLIP-tercile fine-tune set: it depends on the task's erased concepts."""
    return f"{RESULTS}/ftdata/tercile/{task}/{ftset}"


def finetune_dir(task: str, erase: str, ftset: str, ftmethod: str) -> str:
    return f"{RESULTS}/finetune/{task}/{erase}/{ftset}/{ftmethod}"


def train_log(task: str, erase: str, ftset: str, ftmethod: str) -> str:
    """A fine-tune run's declared output; its checkpoints sit beside it."""
    return f"{finetune_dir(task, erase, ftset, ftmethod)}/{TRAIN_LOG}"


def checkpoint_path(finetune_dir: str | Path, step: int) -> Path:
    """The kept checkpoint of a fine-tune run at ``step``."""
    return Path(finetune_dir) / CHECKPOINTS / f"step-{step:06d}"


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint folder's name, or None for anything else."""
    m = _CHECKPOINT_NAME.match(name)
    return int(m.group(1)) if m else None


def reversion_csv(task: str, erase: str, ftset: str, ftmethod: str) -> str:
    """How far a fine-tune run's checkpoints undo its erasure (`resurgence.metrics.reversion`)."""
    return f"{RESULTS}/reversion/{task}/{erase}/{ftset}/{ftmethod}/{REVERSION}"


def images_dir(task: str, state: str) -> str:
    return f"{RESULTS}/images/{task}/{state}"


def images_label(path: str | Path) -> str:
    """``task/state`` of a file in a model state's images folder (inverse of `images_dir`)."""
    parts = Path(path).parent.parts
    for i, part in enumerate(parts):
        if part == "images" and len(parts) > i + 2 and re.fullmatch(STATE_PATTERN, "/".join(parts[i + 2 :])):
            return "/".join(parts[i + 1 :])
    raise ValueError(f"{path} is not in a model state's images folder ({images_dir('<task>', '<state>')})")


def images_index(task: str, state: str) -> str:
    """A model state's image index, written last: its presence means the folder is complete."""
    return f"{images_dir(task, state)}/{IMAGES_INDEX}"


def images_grid(task: str, state: str) -> str:
    """A model state's image grid for people to look at (first seed, up to 8 concepts x their prompts);
    the grids figure stacks them."""
    return f"{images_dir(task, state)}/{IMAGES_GRID}"


def base_pool_dir(pool: str) -> str:
    """A shared pool of base-model images (`study.base_pool_spec`), from which tasks' base states copy."""
    return f"{RESULTS}/base_pool/{pool}"


def base_pool_index(pool: str) -> str:
    return f"{base_pool_dir(pool)}/{IMAGES_INDEX}"


def base_pool_grid(pool: str) -> str:
    return f"{base_pool_dir(pool)}/{IMAGES_GRID}"


METRICS = f"{RESULTS}/metrics"


def metrics_csv(task: str, state: str) -> str:
    """One evaluation job's tidy rows: every score of one model state's images (`metrics.tables`)."""
    return f"{METRICS}/{task}/{state}/{TIDY}"


TABLES = f"{RESULTS}/tables"
FIGURES = f"{RESULTS}/figures"


def tables_dir(experiment: str) -> str:
    return f"{TABLES}/{experiment}"


def tidy_table(experiment: str) -> str:
    return f"{tables_dir(experiment)}/{TIDY}"


def summary_table(experiment: str) -> str:
    return f"{tables_dir(experiment)}/{SUMMARY}"


def resurgence_table(experiment: str) -> str:
    """An experiment's resurgence table (`metrics.tables.resurgence_rate` of its runs)."""
    return f"{tables_dir(experiment)}/{RESURGENCE}"


def figure(name: str) -> str:
    return f"{FIGURES}/{name}.png"


REVERSION_TABLE = f"{tables_dir('reversion')}/{REVERSION}"
REVERSION_FIGURE = figure("reversion")

# ----------------------------------------------------------------------------- toy world

TOY_MODELS_DIR = f"{RESULTS}/toyworld/models"
TOY_QUALITY = f"{RESULTS}/toyworld/quality.json"


def variant_dir(variant: str) -> str:
    """A world variant's retrained text-to-image model (`toyworld.variants` in the config)."""
    return f"{RESULTS}/variants/{variant}"


def manifest_file(folder: str | Path) -> str:
    """The manifest of a models folder or a fine-tune set."""
    return f"{Path(folder).as_posix()}/{MANIFEST}"


# ----------------------------------------------------------------------------- logs and benchmarks

BENCHMARKS = f"{RESULTS}/benchmarks"


def log_file(stage: str, job: str) -> str:
    """A job's log (``job``: its wildcards joined by /)."""
    return f"{LOGS}/{stage}/{job}.log"


def log_dir(name: str) -> str:
    """A folder of logs written by a program the run starts (the MPS daemon's, resurgence.mps)."""
    return f"{LOGS}/{name}"


def benchmark_file(stage: str, job: str) -> str:
    """A heavy job's Snakemake benchmark (time and memory)."""
    return f"{BENCHMARKS}/{stage}/{job}.tsv"
