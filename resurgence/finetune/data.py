"""Fine-tuning sets: generated with the BASE model (paper, App. C), read back as a torch Dataset.

A set directory holds ``images/*.png``, ``metadata.jsonl`` (one row per image: file_name,
prompt, caption, text, concept, seed; the HF imagefolder / diffusers ``text`` convention) and
``manifest.json`` (seed, generation config, counts). ``manifest.json`` is written last, so
its presence marks a complete set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from resurgence.generate.engine import GenerationConfig, generate_to_dir
from resurgence.io import atomic_path, write_json
from resurgence.layout import MANIFEST
from resurgence.mace.refine import tokenize


def image_seeds(seed: int, n: int) -> list[int]:
    """``n`` distinct-stream per-image seeds derived from one set seed (reproducible, no overlaps by index)."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32)]


def build_finetune_set(
    pipe,
    prompts: list[str],
    images_per_prompt: int,
    seed: int,
    gen_cfg: GenerationConfig,
    out_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    concepts: list[str] | None = None,
    progress: bool = True,
    extra_manifest: dict[str, Any] | None = None,
    model_key: str = "",
) -> dict[str, Any]:
    """Generate ``images_per_prompt`` images per prompt with ``pipe`` (the base model) into ``out_dir``.

    ``concepts[i]`` labels ``prompts[i]`` (default: the prompt itself). ``extra_manifest``
    (e.g. the study spec and tercile selection) is merged into ``manifest.json`` under its own
    keys. Resumable through `generate_to_dir` (``model_key``: the weights' identity). Returns the manifest.
    """
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be >= 1, got {images_per_prompt}")
    concepts = list(prompts) if concepts is None else list(concepts)
    if len(concepts) != len(prompts):
        raise ValueError(f"concepts ({len(concepts)}) and prompts ({len(prompts)}) differ in length")
    out = Path(out_dir)
    seeds = image_seeds(seed, len(prompts) * images_per_prompt)
    records = []
    for j, (prompt, concept) in enumerate(zip(prompts, concepts, strict=True)):
        for k in range(images_per_prompt):
            records.append(
                {
                    "file_name": f"images/{j:04d}-{k:03d}.png",
                    "prompt": prompt,
                    "caption": prompt,
                    "text": prompt,
                    "concept": concept,
                    "prompt_index": j,
                    "seed": seeds[j * images_per_prompt + k],
                }
            )
    rows = generate_to_dir(pipe, records, gen_cfg, out, device, progress=progress, model_key=model_key)
    with atomic_path(out / "metadata.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    per_concept: dict[str, int] = {}
    for r in rows:
        per_concept[r["concept"]] = per_concept.get(r["concept"], 0) + 1
    manifest = {
        "seed": seed,
        "generation": asdict(gen_cfg),
        "n_prompts": len(prompts),
        "images_per_prompt": images_per_prompt,
        "n_images": len(rows),
        "n_concepts": len(per_concept),
        "images_per_concept": per_concept,
        "prompts": list(prompts),
    }
    clash = sorted(set(extra_manifest or {}) & set(manifest))
    if clash:
        raise ValueError(f"extra_manifest would overwrite manifest keys {clash}")
    manifest.update(extra_manifest or {})
    write_json(out / MANIFEST, manifest)
    return manifest


def read_metadata(dataset_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(dataset_dir) / "metadata.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def image_to_tensor(img: Image.Image, resolution: int, center_crop: bool = True) -> torch.Tensor:
    """RGB image -> float tensor 3xRxR in [-1, 1] (shortest side resized, then centre/top-left crop)."""
    img = img.convert("RGB")
    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR)
    left, top = ((nw - resolution) // 2, (nh - resolution) // 2) if center_crop else (0, 0)
    img = img.crop((left, top, left + resolution, top + resolution))
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return arr / 127.5 - 1.0


class FinetuneImageDataset(Dataset):
    """A fine-tune set directory as (pixel_values in [-1,1], input_ids) examples.

    Random horizontal flip is off by default (identities are not flip-symmetric in general);
    when on, it draws from torch's global RNG, which the trainer seeds and checkpoints.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        tokenizer,
        resolution: int,
        random_flip: bool = False,
        center_crop: bool = True,
    ) -> None:
        self.dir = Path(dataset_dir)
        self.rows = read_metadata(self.dir)
        if not self.rows:
            raise ValueError(f"empty fine-tune set: {self.dir}")
        self.tokenizer = tokenizer
        self.resolution = resolution
        self.random_flip = random_flip
        self.center_crop = center_crop

    def __len__(self) -> int:
        return len(self.rows)

    def caption(self, i: int) -> str:
        r = self.rows[i]
        return str(r.get("text") or r.get("caption") or r["prompt"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.rows[i]
        with Image.open(self.dir / r["file_name"]) as img:
            x = image_to_tensor(img, self.resolution, self.center_crop)
        if self.random_flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        ids = tokenize(self.tokenizer, [self.caption(i)])[0]
        return {"pixel_values": x, "input_ids": ids, "caption": self.caption(i), "concept": r.get("concept")}


def collate(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "input_ids": torch.stack([e["input_ids"] for e in examples]),
        "caption": [e["caption"] for e in examples],
    }


def tercile_of(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """1, 2 or 3 per score: <= 33rd percentile, <= 67th, above (lower tercile = less similar)."""
    return 1 + (scores > edges[1]).astype(int) + (scores > edges[2]).astype(int)


def select_tercile_concepts(
    candidates: list[str],
    erased: list[str],
    similarity: Callable[[list[str], list[str]], torch.Tensor],
    n_per_tercile: int,
    seed: int,
) -> dict[str, Any]:
    """App. C.2: split candidates into similarity terciles w.r.t. the erased concepts and sample each.

    A candidate's score is its MIN cosine similarity over the erased concepts (as the paper
    states). ``similarity(candidates, erased)`` returns a ``len(candidates) x len(erased)``
    matrix. Terciles are cut at the 33.3rd/66.7th percentiles (numpy linear interpolation), so
    tercile 1 is the least related. Candidates that are themselves erased concepts are dropped.
    """
    erased_keys = {e.strip().lower() for e in erased}
    cands = [c for c in dict.fromkeys(candidates) if c.strip().lower() not in erased_keys]
    if len(cands) < 3 * n_per_tercile:
        raise ValueError(f"{len(cands)} candidates cannot fill 3 terciles of {n_per_tercile}")
    sim = torch.as_tensor(similarity(cands, list(erased))).detach().float().cpu().numpy()
    if sim.shape != (len(cands), len(erased)):
        raise ValueError(f"similarity returned shape {sim.shape}, expected {(len(cands), len(erased))}")
    scores = sim.min(axis=1)
    edges = np.percentile(scores, [0.0, 100.0 / 3.0, 200.0 / 3.0, 100.0])
    which = tercile_of(scores, edges)
    rng = np.random.default_rng(seed)
    terciles: dict[int, list[str]] = {}
    members: dict[int, list[str]] = {}
    for t in (1, 2, 3):
        pool = [c for c, w in zip(cands, which, strict=True) if w == t]
        members[t] = pool
        if len(pool) < n_per_tercile:
            raise ValueError(f"tercile {t} has {len(pool)} candidates, fewer than {n_per_tercile}")
        idx = rng.choice(len(pool), size=n_per_tercile, replace=False)
        terciles[t] = [pool[i] for i in idx]
    return {
        "terciles": terciles,
        "intervals": {t: (float(edges[t - 1]), float(edges[t])) for t in (1, 2, 3)},
        "scores": {c: float(s) for c, s in zip(cands, scores, strict=True)},
        "members": members,
        "seed": seed,
    }
