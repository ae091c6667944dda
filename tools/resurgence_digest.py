"""Digest the metric tables of a (partial) study: `tables.resurgence_rate` per run, mean and seed range.

    python tools/resurgence_digest.py RESULTS_DIR OUT.csv   # RESULTS_DIR holds metrics/**/tidy.csv

For runs copied back from a lent GPU before the whole study (and its figures) existed.
"""

import sys
from pathlib import Path

from resurgence.metrics.tables import read_tidy, resurgence_rate, write_table

root, out = Path(sys.argv[1]), sys.argv[2]
rates = resurgence_rate(read_tidy(sorted(root.glob("metrics/**/tidy.csv"))))
keys = ["task", "erase", "ftset", "ftmethod", "metric"]
digest = (
    rates.groupby(keys, sort=True)
    .agg(
        seeds=("seed", "nunique"),
        base=("base", "mean"),
        erased=("erased", "mean"),
        finetuned=("finetuned", "mean"),
        resurgence=("resurgence", "mean"),
        resurgence_min=("resurgence", "min"),
        resurgence_max=("resurgence", "max"),
    )
    .reset_index()
)
write_table(digest.round(4), out, sort_by=keys)
print(digest.round(4).to_string(index=False))
