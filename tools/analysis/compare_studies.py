"""Do two runs of the study agree within seed noise? For every run (task, erase, ftset, ftmethod) both
hold and each of base / erased / fine-tuned accuracy and resurgence in one measure: the difference of the
means over seeds (B - A) and its 95 % Welch interval; the two agree where the interval holds zero. Runs
with no spread in either study agree only where their means are equal; a run with fewer than two seeds in
either study has no interval and is counted as not agreeing (its low and high are empty).

With hundreds of comparisons at 95 %, about one in twenty disagrees by chance; the summary gives the
count per erase variant, so that a code change confined to one method shows as that method's rows.

Usage:  python tools/analysis/compare_studies.py A B [--measure top1|prob|rank] [--out comparison.csv]
A and B: a results folder or a resurgence CSV of one (docs/study_*/resurgence.csv).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from trends import MEASURES, RUN, resurgence_rows  # tools/analysis/ is on sys.path when run as a script

QUANTITIES = ("base", "erased", "finetuned", "resurgence")


def difference_interval(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """mean(b) - mean(a) and its Welch interval; a point interval where neither sample varies."""
    diff = float(b.mean() - a.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan"), float("nan")
    if np.ptp(a) < 1e-9 and np.ptp(b) < 1e-9:  # no spread (to float noise) in either
        return diff, diff, diff
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(level)
    return diff, float(ci.low), float(ci.high)


def compare(a: pd.DataFrame, b: pd.DataFrame, scale: float) -> pd.DataFrame:
    """One row per run both studies hold and per quantity (module doc)."""
    rows = []
    b_runs = dict(iter(b.groupby(RUN)))
    for keys, ga in a.groupby(RUN):
        gb = b_runs.get(keys)
        if gb is None:
            continue
        for q in QUANTITIES:
            va, vb = ga[q].dropna().to_numpy(float) * scale, gb[q].dropna().to_numpy(float) * scale
            diff, lo, hi = difference_interval(va, vb)
            rows.append(
                dict(
                    zip(RUN, keys, strict=True),
                    quantity=q,
                    seeds_a=len(va),
                    seeds_b=len(vb),
                    mean_a=round(va.mean(), 2),
                    mean_b=round(vb.mean(), 2),
                    difference=round(diff, 2),
                    low=round(lo, 2),
                    high=round(hi, 2),
                    agree=bool(lo <= 0 <= hi),
                )
            )
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--measure", choices=sorted(MEASURES), default="top1")
    ap.add_argument("--out", type=Path, help="every comparison as CSV")
    args = ap.parse_args()
    table = compare(
        resurgence_rows(args.a, args.measure),
        resurgence_rows(args.b, args.measure),
        MEASURES[args.measure][1],
    )
    if table.empty:
        raise SystemExit(f"{args.a} and {args.b} share no run")
    by_erase = table.groupby("erase")["agree"].agg(["size", "sum"])
    print(
        f"{args.measure}: {int(table['agree'].sum())} of {len(table)} comparisons agree (95 % Welch intervals)"
    )
    print(by_erase.rename(columns={"size": "comparisons", "sum": "agree"}).to_string())
    print(table[~table["agree"]].to_string(index=False))
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
