"""Reading the toy world's manifest (`manifest.json` beside its models), torch-free: the Snakefile reads
it while it builds the DAG. `train` writes it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from resurgence.io import read_json
from resurgence.layout import MANIFEST


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """``out_dir/manifest.json``, or an empty one (no models yet)."""
    path = Path(out_dir) / MANIFEST
    return read_json(path) if path.exists() else {"models": {}}


def trained_knowledge(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The knowledge geometry each trained model of ``out_dir`` learned (from its manifest config)."""
    models = read_manifest(out_dir).get("models", {})
    return {m: models[m]["config"].get("knowledge") for m in ("t2i", "clip") if m in models}
