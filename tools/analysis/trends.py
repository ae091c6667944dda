"""The study's numbers as the issue notes quote them: per run, erased-concept accuracy base ->
erased -> fine-tuned and the resurgence (mean over seeds, ± the 95% t-interval half-width), and
retained-concept accuracy per state. Reads results/tables/*/{resurgence,summary}.csv.
``--measure prob`` / ``rank`` give the erased concepts' true-concept probability (in %) or mean rank
instead of top-1 (the task's judge: the detector for identities, CLIP for objects).

Usage:  python tools/analysis/trends.py [--results results] [--measure top1|prob|rank] [--out trends.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from scipy import stats

from resurgence.io import atomic_path
from resurgence.metrics.tables import (
    ACCURACY_METRIC,
    RESURGENCE_METRICS,
    RUN_KEYS,
    final_rows,
    read_summary,
    task_sort_key,
)

RUN = list(RUN_KEYS)
# Position of each measure in RESURGENCE_METRICS[domain] (the judge's top-1, probability, rank), and its scale.
MEASURES: dict[str, tuple[int, float]] = {"top1": (0, 100.0), "prob": (1, 100.0), "rank": (2, 1.0)}


def mean_ci(values: pd.Series, scale: float = 100.0) -> str:
    v = values.dropna().astype(float) * scale
    if len(v) == 0:
        return "n/a"
    if len(v) < 2:
        return f"{v.mean():.1f}"
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / len(v) ** 0.5
    return f"{v.mean():.1f}±{half:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--measure", choices=sorted(MEASURES), default="top1")
    ap.add_argument("--out")
    args = ap.parse_args()
    index, scale = MEASURES[args.measure]
    tables = Path(args.results) / "tables"
    res = pd.concat(
        [pd.read_csv(p).assign(experiment=p.parent.name) for p in sorted(tables.glob("*/resurgence.csv"))]
    )
    metric = res["domain"].map(lambda d: RESURGENCE_METRICS[d][index])
    res = res[res["metric"] == metric].drop_duplicates(subset=[*RUN, "seed"])
    res = res.sort_values(RUN, key=lambda c: c.map(task_sort_key) if c.name == "task" else c)
    lines = [
        f"| task | erase | ftset | ftmethod | base | erased | fine-tuned | resurgence ({args.measure}) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for keys, g in res.groupby(RUN, sort=False):
        lines.append(
            "| "
            + " | ".join(keys)
            + " | "
            + " | ".join(mean_ci(g[c], scale) for c in ("base", "erased", "finetuned", "resurgence"))
            + " |"
        )
    summary = read_summary(sorted(tables.glob("*/summary.csv"))).drop_duplicates()
    acc_metric = summary["domain"].map(ACCURACY_METRIC)
    ret = summary[(summary["role"] == "retained") & (summary["metric"] == acc_metric)]
    ret = pd.concat([ret[ret["state"] != "finetuned"], final_rows(ret[ret["state"] == "finetuned"])])
    lines += [
        "",
        "| task | erase | ftset | ftmethod | state | retained accuracy |",
        "|---|---|---|---|---|---|",
    ]
    ret = ret.fillna({c: "" for c in RUN})
    per_seed = ret.groupby([*RUN, "state", "seed"], sort=False)["value"].mean().reset_index()
    for keys, g in per_seed.groupby([*RUN, "state"], sort=True):
        lines.append("| " + " | ".join(map(str, keys)) + f" | {mean_ci(g['value'])} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text + "\n")


if __name__ == "__main__":
    main()
