"""Shared steps of the analysis tools that read the text side of a study's models (run as scripts:
tools/analysis/ is on sys.path)."""

from __future__ import annotations

import csv
from collections import Counter
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


def main_mapping(mapping: dict[str, str]) -> str:
    """The mapping concept most of a task's erased concepts share (the reference for retained ones)."""
    return Counter(mapping.values()).most_common(1)[0][0]


def write_csv(
    path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]], comment: str = ""
) -> None:
    """A CSV written to a temporary path and renamed (no half-written file); ``comment`` lines first, as "# ..."."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        for line in comment.splitlines():
            f.write(f"# {line}\n")
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    print("wrote", path)
