"""Erasure efficacy before fine-tuning, per task, erasure and seed: accuracy (%) on the erased and on
the retained concepts of the base and erased states, from the metric files of one or more result
folders (e.g. device runs unpacked side by side). Issue #4's gates read off it: erased <= 10,
retained >= base - 5.

Usage:  python tools/analysis/efficacy.py --results /tmp/r7=round7 /tmp/r8=round8 --out docs/efficacy.csv
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

import pandas as pd
from common import write_csv

from resurgence.metrics.tables import ACCURACY_METRIC, read_tidy, summarize

HEADER = (
    "task",
    "erase",
    "seed",
    "metric",
    "erased",
    "retained",
    "n_erased_images",
    "n_retained_images",
    "run",
)


def efficacy_rows(results: str | Path, run: str) -> pd.DataFrame:
    """One row per (task, erasure, seed) of a result folder's base and erased states."""
    paths = sorted(
        glob.glob(f"{results}/metrics/*/base/tidy.csv") + glob.glob(f"{results}/metrics/*/*/erased/tidy.csv")
    )
    if not paths:
        raise SystemExit(f"no base or erased metric files under {results}/metrics")
    s = summarize(read_tidy(paths))
    s = s[(s["metric"] == s["domain"].map(ACCURACY_METRIC)) & s["role"].isin(["erased", "retained"])]
    s = s.assign(erase=s["erase"].where(s["state"] != "base", "base"), value=s["value"] * 100)
    wide = s.pivot_table(index=["task", "erase", "seed", "metric"], columns="role", values=["value", "n"])
    out = pd.DataFrame(
        {
            "erased": wide[("value", "erased")].round(2),
            "retained": wide[("value", "retained")].round(2),
            "n_erased_images": wide[("n", "erased")].astype(int),
            "n_retained_images": wide[("n", "retained")].astype(int),
        }
    ).reset_index()
    out["run"] = run
    return out[list(HEADER)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--results", nargs="+", required=True, help="result folders, each as PATH or PATH=RUN_LABEL"
    )
    ap.add_argument("--out", required=True)
    ap.add_argument("--comment", default="", help="lines written above the header, as '# ...'")
    args = ap.parse_args()
    frames = []
    for item in args.results:
        path, _, run = item.partition("=")
        frames.append(efficacy_rows(path, run or Path(path).name))
    df = pd.concat(frames, ignore_index=True)
    # the base model is sampled again by every run; list it once per distinct measurement
    base = df[df["erase"] == "base"].drop_duplicates([c for c in HEADER if c != "run"])
    df = pd.concat([base, df[df["erase"] != "base"]]).reset_index(drop=True)
    write_csv(args.out, HEADER, df.itertuples(index=False), args.comment)
    means = df.groupby(["task", "erase", "run"], sort=False)[["erased", "retained"]].mean().round(1)
    print(means.to_string())


if __name__ == "__main__":
    main()
