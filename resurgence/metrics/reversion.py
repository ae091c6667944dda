"""Why an erased concept comes back: how far fine-tuning undoes the erasure edit, layer by layer.

MACE edits the cross-attention key/value maps (``attn2.to_k``/``to_v``): dE = W_erased - W_base. A
fine-tune then moves them by dF = W_finetuned - W_erased (LoRA merged). The paper's hypothesis is
that benign fine-tuning moves the weights back toward the pretrained ones; these measures say how
much, in weight space and in the erased concepts' own keys and values:

* ``erase_rel_norm``   ||dE|| / ||W_base||, the size of the erasure edit;
* ``finetune_rel_norm`` ||dF|| / ||W_erased||, the size of the fine-tune's move;
* ``edit_to_update``   ||dE|| / ||dF||: how many fine-tune moves the edit is (the ratio of the two
  relative norms overstates it by ||W_erased|| / ||W_base||, large where an edit outgrows the weights);
* ``reversion_cosine`` cos(dF, -dE): 1 when the fine-tune moves straight back, 0 when orthogonal;
* ``undone_fraction``  <dF, -dE> / ||dE||^2: the share of the edit undone along its own direction;
* ``kv_return``        the same share for the erased concepts' keys/values E W^T (E: the text-encoder
  states of their tokens, `resurgence.mace.refine.collect_coexisting_embeddings`): 0 still at the
  mapping target MACE moved them to, 1 back at the base model's;
* ``kv_remaining``     ||E W_ft^T - E W_base^T|| / ||E W_erased^T - E W_base^T||: the distance left to
  the base keys/values, 1 as erased, 0 fully back.

Every measure is given per layer and for all layers together (``layer = "total"``: the layers'
vectors concatenated, not an average of per-layer values). Methods that edit more than the key/value
maps (ESD) are measured over every parameter they changed; the key/value measures then come from the
key/value maps alone (NaN where the erasure did not move them).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import pandas as pd
import torch

TOTAL = "total"
MEASURES: tuple[str, ...] = (
    "erase_rel_norm",
    "finetune_rel_norm",
    "edit_to_update",
    "reversion_cosine",
    "undone_fraction",
    "kv_return",
    "kv_remaining",
)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _measures(
    w_base: torch.Tensor, w_erased: torch.Tensor, w_ft: torch.Tensor, keys: torch.Tensor
) -> dict[str, float]:
    """The `MEASURES` of one flattened weight vector; ``keys`` are E W^T flattened, stacked (base, erased, ft)."""
    d_e, d_f = w_erased - w_base, w_ft - w_erased
    ne, nf = float(d_e.norm()), float(d_f.norm())
    back = float(-(d_f @ d_e))
    k_base, k_erased, k_ft = keys
    k_gap = k_base - k_erased
    return {
        "erase_rel_norm": _ratio(ne, float(w_base.norm())),
        "finetune_rel_norm": _ratio(nf, float(w_erased.norm())),
        "edit_to_update": _ratio(ne, nf),
        "reversion_cosine": _ratio(back, ne * nf),
        "undone_fraction": _ratio(back, ne**2),
        "kv_return": _ratio(float((k_ft - k_erased) @ k_gap), float(k_gap @ k_gap)),
        "kv_remaining": _ratio(float((k_ft - k_base).norm()), float(k_gap.norm())),
    }


def reversion(
    weights: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    embeddings: torch.Tensor,
    kv_layers: Collection[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Per layer name (and `TOTAL`), the `MEASURES` of its (base, erased, fine-tuned) weights.

    ``embeddings`` (tokens x text dim) are the erased concepts' text-encoder states; each of the
    ``kv_layers`` (default: every layer) maps them to its keys or values. Other layers (parameters an
    erasure changed outside the key/value maps) count in the weight measures only. Computed in float64.
    """
    if not weights:
        raise ValueError("no layers to measure")
    kv = set(weights) if kv_layers is None else set(kv_layers)
    E = embeddings.to(torch.float64).cpu()
    w_parts: tuple[list[torch.Tensor], ...] = ([], [], [])
    k_parts: tuple[list[torch.Tensor], ...] = ([], [], [])
    out: dict[str, dict[str, float]] = {}
    for name, triple in weights.items():
        ws = [w.detach().to(torch.float64).cpu() for w in triple]
        if not ws[0].shape == ws[1].shape == ws[2].shape:
            raise ValueError(f"{name}: base, erased and fine-tuned weights differ in shape")
        ks = [(E @ w.T).flatten() for w in ws] if name in kv else [torch.zeros(0, dtype=torch.float64)] * 3
        ws = [w.flatten() for w in ws]
        out[name] = _measures(*ws, torch.stack(ks))
        for i in range(3):
            w_parts[i].append(ws[i])
            k_parts[i].append(ks[i])
    out[TOTAL] = _measures(*(torch.cat(p) for p in w_parts), torch.stack([torch.cat(p) for p in k_parts]))
    return out


def reversion_table(reversion_rows: pd.DataFrame, resurgence: pd.DataFrame) -> pd.DataFrame:
    """One row per run and kept step: its all-layer (`TOTAL`) measures as columns and, at the final step,
    its resurgence (mean over seeds) of the task's top-1 accuracy and of the true concept's probability."""
    from resurgence.evaluate.base import PRESENCE_METRICS
    from resurgence.metrics.tables import ACCURACY_METRIC, RUN_KEYS

    total = reversion_rows[reversion_rows["layer"] == TOTAL]
    wide = total.pivot_table(
        index=[*RUN_KEYS, "step", "is_final"], columns="measure", values="value"
    ).reset_index()
    wide.columns.name = None
    top1 = resurgence["domain"].map(ACCURACY_METRIC)
    prob = top1.map(lambda m: PRESENCE_METRICS[m][0])
    out = wide
    for name, wanted in (("resurgence", top1), ("resurgence_prob", prob)):
        per_run = resurgence[resurgence["metric"] == wanted].groupby([*RUN_KEYS, "step"])["resurgence"].mean()
        out = out.merge(per_run.rename(name).reset_index(), on=[*RUN_KEYS, "step"], how="left")
    return out[
        [*RUN_KEYS, "step", "is_final", *[m for m in MEASURES if m in out], "resurgence", "resurgence_prob"]
    ]
