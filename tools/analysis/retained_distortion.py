"""Which part of MACE's closed form loses a task's retained concepts: its stage-1 edit (`refine_weights`, as the
erase job builds it) at several in-domain cache weights, measured on the key/value outputs of the tokens that
carry each concept (`capacity.concept_token_states`).

For each key/value layer W and edit W' (relative norms, summed over layers and tokens):
  erased_left           ||W' h_co - W h_gen|| / ||W h_co - W h_gen||   over the erased concepts (0: fully mapped)
  retained_distortion   ||(W' - W) h_co|| / ||W h_co - W h_gen||      over the retained concepts: the change
                        against the concept's own signal, its difference from the mapping concept
  retained_output_change ||(W' - W) h|| / ||W h||                       over every token of the retained prompts
  cache_change          ||(W' - W) h|| / ||W h||                       over every token the cache holds
  unconditional_change  ||(W' - W) h|| / ||W h||                       over the unconditional prompt's tokens,
                        which classifier-free guidance pairs with every image
  heldout_caption_change ||(W' - W) h|| / ||W h||                      over every token of the evaluation's free
                        captions (`evaluation.captions`: CLIP score and FID), none of which the cache holds
The study's images judge the same thing downstream; this isolates the closed form (no LoRA, no fusion).

Usage:  python tools/analysis/retained_distortion.py --task identity_100 [--erase default ...] --scales 1 10 100 [--out CSV]
Runs on CPU in about a minute a task on the toy world (text encoder and key/value weights only).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from common import load_study_text_side, main_mapping, write_csv  # tools/analysis/ is on sys.path

from resurgence import study
from resurgence.erasure.artifact import base_linear, kv_module_names
from resurgence.mace.capacity import concept_token_states, edit_effects, eval_prompt_sets
from resurgence.mace.config import EraseConfig
from resurgence.mace.erase import _prior_embeddings
from resurgence.mace.refine import collect_token_embeddings, refine_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", nargs="+", default=["config.yaml"])
    ap.add_argument("--task", nargs="+", required=True)
    ap.add_argument("--erase", nargs="+", default=["default"], help="erase variants")
    ap.add_argument(
        "--scales", nargs="+", type=float, default=[1.0], help="factors on the study's cache weight"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    config, world, pipe = load_study_text_side(args.config)
    names = kv_module_names(pipe.unet)
    W = [base_linear(pipe.unet, n).weight.detach().to(torch.float64) for n in names]
    rows = []
    with torch.no_grad():
        for task, erase in ((task, erase) for task in args.task for erase in args.erase):
            t = config["tasks"][task]
            spec = study.erase_spec(config, task, erase, world)
            cfg = EraseConfig.from_dict(spec["mace"])
            mapping = study.probe_mappings(config, task, erase)
            co_e, gen_e = concept_token_states(pipe, eval_prompt_sets(world, t["erase"]), mapping)
            co_r, gen_r = concept_token_states(
                pipe, eval_prompt_sets(world, t["retain"]), main_mapping(mapping)
            )
            retained_prompts = [p for n in t["retain"] for p in world.eval_prompts(world.concept(n))]
            H_r = collect_token_embeddings(pipe, retained_prompts).to(torch.float64)
            H_cache = collect_token_embeddings(pipe, list(cfg.domain_preserve)).to(torch.float64)
            H_uncond = collect_token_embeddings(pipe, [study.unconditional_prompt(config)]).to(torch.float64)
            caps = config["evaluation"]["captions"]
            H_heldout = collect_token_embeddings(pipe, world.free_captions(caps["n"], caps["seed"])).to(
                torch.float64
            )
            for scale in args.scales:
                c = dataclasses.replace(cfg, domain_weight=cfg.domain_weight * scale)
                E_prior = _prior_embeddings(pipe, c)
                info: dict = {}
                W1 = refine_weights(W, co_e, gen_e, E_prior, c.lambda1, c.ridge, c.rcond, c.on_singular, info)
                effects = edit_effects(
                    W,
                    W1,
                    (co_e, gen_e),
                    (co_r, gen_r),
                    {"retained": H_r, "cache": H_cache, "unconditional": H_uncond, "heldout": H_heldout},
                )
                row = dict(
                    task=task,
                    erase=erase,
                    n_erased=len(t["erase"]),
                    n_cache_prompts=len(cfg.domain_preserve),
                    n_prior_captions=len(cfg.preserve),
                    scale=scale,
                    cache_weight_per_row=c.lambda1 * c.domain_weight,
                    edit_rel_norm=effects.edit_rel_norm,
                    erased_left=effects.erased_left,
                    retained_distortion=effects.retained_distortion,
                    retained_output_change=effects.output_change["retained"],
                    cache_change=effects.output_change["cache"],
                    unconditional_change=effects.output_change["unconditional"],
                    heldout_caption_change=effects.output_change["heldout"],
                    solve=info.get("method", ""),
                )
                rows.append(row)
                print(
                    " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
                )
    if args.out:
        write_csv(args.out, list(rows[0]), [list(r.values()) for r in rows])


if __name__ == "__main__":
    main()
