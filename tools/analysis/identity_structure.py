"""How many directions the text encoder gives the world's identities, and how much of the retained
identities' signal lies where an erasure of each identity task must act. Written as a CSV.

Usage:  python tools/analysis/identity_structure.py [--config config.yaml ...] [--out docs/identity_structure.csv]
Runs on CPU in seconds on the toy world (text encoder only). Each identity is one vector: the mean,
over its evaluation prompts' co-existing tokens, of its difference from the mapping prompt (what
MACE's closed form must send to zero). Toy-world identities are drawn from visual traits, so the
trait one-hot regression says how much of that vector the traits explain (held-out identities
included); the SD v1.4 world has no traits and skips it. Last, per identity task, the share of the
retained identities' distinguishing signal inside the span of the erased ones' (`share_in_span`).
"""

from __future__ import annotations

import argparse

import torch
from common import (  # tools/analysis/ is on sys.path
    load_study_text_side,
    main_mapping,
    write_csv,
)

from resurgence import study
from resurgence.mace.capacity import concept_differences, eval_prompt_sets, principal_dims, share_in_span


def r2(Y: torch.Tensor, P: torch.Tensor) -> float:
    return float(1 - (Y - P).pow(2).sum() / (Y - Y.mean(0)).pow(2).sum())


def trait_design(concepts) -> torch.Tensor:
    """Intercept + one-hot of every (trait, value) the identities use."""
    values = sorted({kv for c in concepts for kv in c.traits})
    return torch.tensor(
        [[1.0] + [float(kv in set(c.traits)) for kv in values] for c in concepts], dtype=torch.float64
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", default=["config.yaml"])
    ap.add_argument("--out", default="docs/identity_structure.csv")
    ap.add_argument("--splits", type=int, default=20, help="random train/held-out splits per fit size")
    args = ap.parse_args()
    config, world, pipe = load_study_text_side(args.config)
    tasks = {k: t for k, t in config["tasks"].items() if t["domain"] == "identity"}
    mapping = main_mapping(study.probe_mappings(config, next(iter(tasks)), "default"))
    identities = list(world.by_domain("identity"))
    with torch.no_grad():
        vec = {
            c.name: concept_differences(pipe, eval_prompt_sets(world, [c.name]), mapping).mean(0)
            for c in identities
        }
    D = torch.stack([vec[c.name] for c in identities])
    rows = [("identities", len(identities)), ("feature_dim", D.shape[1])]
    rows += [(f"principal_dims_{int(share * 100)}pct", n) for share, n in principal_dims(D).items()]
    if all(c.traits for c in identities):
        T = trait_design(identities)
        rows += [
            ("trait_design_rank", int(torch.linalg.matrix_rank(T))),
            ("trait_r2_in_sample", round(r2(D, T @ torch.linalg.lstsq(T, D).solution), 4)),
        ]
        g = torch.Generator().manual_seed(0)
        for n_fit in (40, 100):
            scores = []
            for _ in range(args.splits):
                perm = torch.randperm(len(identities), generator=g)
                fit, held = perm[:n_fit], perm[n_fit:]
                B = torch.linalg.pinv(T[fit]) @ D[fit]
                scores.append(r2(D[held], T[held] @ B))
            rows.append((f"trait_r2_held_out_fit_on_{n_fit}", round(sum(scores) / len(scores), 4)))
    # What tells identities apart: each vector less the mean over all identities (the shared
    # "a named person" part, which every erasure removes and no identity is recognised by).
    mean = D.mean(0)
    for name, t in tasks.items():
        De = torch.stack([vec[n] - mean for n in t["erase"]])
        Dr = torch.stack([vec[n] - mean for n in t["retain"]])
        rows.append((f"{name}_retained_identity_signal_in_erased_span", round(share_in_span(Dr, De), 4)))
    for k, v in rows:
        print(f"{k:45s} {v}")
    write_csv(args.out, ["quantity", "value"], rows)


if __name__ == "__main__":
    main()
