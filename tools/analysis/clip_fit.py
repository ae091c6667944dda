"""How closely the shipped toy CLIP's name embeddings fit the knowledge geometry they were trained on, and
why App. C.2's object statistic falls below the paper's range when the targets' lies inside it.

Per CIFAR-100 candidate: its minimum cosine to the erase set under the knowledge targets and under CLIP.
Over every pair of concept names: the residual of CLIP's cosines against the targets (RMS per domain pair),
the spread of each, and their correlation; and the smallest residual any set of unit vectors of CLIP's
embedding width (and of others) can reach on the same targets (a direct fit), which separates the
embedding's capacity from the training's other pulls. Calibration statistics only; no resurgence is read.

Usage:  python tools/analysis/clip_fit.py [--config config.yaml] [--out docs/clip_fit.csv]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import write_csv

from resurgence import study
from resurgence.config import load_config
from resurgence.models.clip import load_clip
from resurgence.toyworld.clip import knowledge_gram_loss
from resurgence.toyworld.concepts import toy_world
from resurgence.toyworld.geometry import calibration_statistics, gram_similarity, knowledge_gram
from resurgence.toyworld.knowledge import KnowledgeConfig
from resurgence.toyworld.manifest import read_manifest, trained_knowledge


def best_fit_residual(gram: torch.Tensor, dim: int, steps: int = 3000, seed: int = 0) -> float:
    """RMS off-diagonal residual of unit vectors in ``dim`` dimensions fitted directly to ``gram``."""
    x = torch.randn(gram.shape[0], dim, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    opt = torch.optim.Adam([x], lr=0.01)
    for _ in range(steps):
        loss = knowledge_gram_loss(torch.nn.functional.normalize(x, dim=1), gram)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach().sqrt())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", nargs="+", default=["config.yaml"])
    p.add_argument("--out", default="docs/clip_fit.csv")
    args = p.parse_args()
    config = load_config(args.config)
    models_dir = study.toy_models_dir(config)
    manifest = read_manifest(models_dir)
    knowledge = KnowledgeConfig.from_dict(trained_knowledge(models_dir)["clip"])
    world = toy_world(int(manifest["models"]["clip"]["seed"] or 0))
    erase_sets = manifest["geometry"]["erase_sets"]
    names, gram = knowledge_gram(world, knowledge)
    gram = gram.float()
    clip = load_clip({"kind": "toy", "path": f"{models_dir}/clip"}, device="cpu")
    with torch.no_grad():
        fitted = clip.similarity(names, names).float()
    target_sim, clip_sim = gram_similarity(names, gram), gram_similarity(names, fitted)

    rows = []
    erased = erase_sets["object"]
    cands = [
        c.name for c in world.objects if dict(c.traits).get("dataset") == "cifar100" and c.name not in erased
    ]
    t_min, c_min = target_sim(cands, erased).min(1).values, clip_sim(cands, erased).min(1).values
    for name, t, c in sorted(zip(cands, t_min.tolist(), c_min.tolist(), strict=True), key=lambda r: r[2]):
        rows.append(["candidate_min_cosine", name, round(t, 4), round(c, 4)])

    ni = len(world.identities)
    blocks = {
        "identity-identity": (slice(0, ni), slice(0, ni)),
        "object-object": (slice(ni, None), slice(ni, None)),
    }
    blocks["identity-object"] = (slice(0, ni), slice(ni, None))
    for block, (a, b) in blocks.items():
        t, c = gram[a, b].numpy(), fitted[a, b].numpy()
        keep = ~np.eye(*t.shape, dtype=bool) if a == b else np.ones(t.shape, dtype=bool)
        t, c = t[keep], c[keep]
        rows.append(["residual_rms", block, "", round(float(np.sqrt(((c - t) ** 2).mean())), 4)])
        rows.append(["spread_std", block, round(float(t.std()), 4), round(float(c.std()), 4)])
        rows.append(["correlation", block, "", round(float(np.corrcoef(t, c)[0, 1]), 4)])
    width = int(clip.encode_texts(["a"]).shape[1])
    for dim in sorted({32, width, 2 * width, 4 * width}):
        rows.append(
            [
                "best_fit_residual_rms",
                f"dim {dim}" + (" (CLIP's)" if dim == width else ""),
                "",
                round(best_fit_residual(gram, dim), 4),
            ]
        )
    stats = calibration_statistics(clip_sim, world, erase_sets)
    for domain, st in stats.items():
        rows.append(
            ["clip_statistic", domain, "", f"{st['min']:.3f}-{st['max']:.3f} (paper {st['paper_range']})"]
        )
    write_csv(
        args.out,
        ["measure", "what", "target", "clip"],
        rows,
        comment=f"tools/analysis/clip_fit.py on {models_dir} ({len(names)} concept names, knowledge {knowledge})",
    )
    for r in rows:
        if r[0] != "candidate_min_cosine":
            print(*r, sep="\t")


if __name__ == "__main__":
    main()
