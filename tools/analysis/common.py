"""Shared steps of the analysis tools that read the text side of a study's models (run as scripts:
tools/analysis/ is on sys.path)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from resurgence import study
from resurgence.config import load_config
from resurgence.io import atomic_path
from resurgence.stages import load_study_pipeline
from resurgence.world import get_world


def load_study_text_side(config_paths: Sequence[str]) -> tuple[dict[str, Any], Any, Any]:
    """(config, world, pipeline on CPU) of a config, as the study's stages load them."""
    config = load_config(config_paths)
    world = get_world(config)
    return config, world, load_study_pipeline(study.model_specs(config), "cpu")


def task_mapping(config: dict[str, Any], task: str, world) -> str:
    """The one mapping concept of a task's default erasure (per-concept mappings are not handled)."""
    spec = study.erase_spec(config, task, "default", world)
    mappings = {c["mapping"] for c in spec["concepts"]}
    if len(mappings) != 1:
        raise SystemExit(f"{task}: per-concept mapping concepts are not handled here")
    (mapping,) = mappings
    return mapping


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A CSV written to a temporary path and renamed (no half-written file)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    print("wrote", path)
