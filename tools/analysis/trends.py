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


def resurgence_rows(source: Path, measure: str) -> pd.DataFrame:
    """Each run's per-seed resurgence rows in one measure, from a study's results folder (its
    ``tables/*/resurgence.csv``) or from one CSV of those rows (as docs/ keep them)."""
    if source.is_dir():
        found = sorted((source / "tables").glob("*/resurgence.csv"))
        res = pd.concat([pd.read_csv(p).assign(experiment=p.parent.name) for p in found])
    else:
        res = pd.read_csv(source, comment="#")
    metric = res["domain"].map(lambda d: RESURGENCE_METRICS[d][MEASURES[measure][0]])
    return res[res["metric"] == metric].drop_duplicates(subset=[*RUN, "seed"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results")
    ap.add_argument("--measure", choices=sorted(MEASURES), default="top1")
    ap.add_argument("--out")
    args = ap.parse_args()
    scale = MEASURES[args.measure][1]
    tables = Path(args.results) / "tables"
    res = resurgence_rows(Path(args.results), args.measure)
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
