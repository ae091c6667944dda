"""How long Snakemake takes to read the workflow and build the study's DAG (`snakemake -n --quiet`), which
every cluster job and every dry run pays again, against the same with torch imported first (what the
parse cost while the study's specs imported torch): both in one run, alternating, median of each.

    python benchmarks/dag_parse.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from common import command_seconds, record  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
DRY_RUN = ["-n", "--quiet", "--forceall"]
# The same dry run in an interpreter that has imported torch before Snakemake reads the Snakefile.
WITH_TORCH = "import sys, runpy, torch; sys.argv = ['snakemake', *sys.argv[1:]]; runpy.run_module('snakemake', run_name='__main__')"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--configfile", nargs="*", default=[], help="overlays on config.yaml")
    args = p.parse_args(argv)
    extra = ["--configfile", *args.configfile] if args.configfile else []
    plain, torch_first = [], []
    for _ in range(args.repeats):
        plain.append(command_seconds([sys.executable, "-m", "snakemake", *DRY_RUN, *extra], ROOT))
        torch_first.append(command_seconds([sys.executable, "-c", WITH_TORCH, *DRY_RUN, *extra], ROOT))
    record(
        "dag_parse",
        dict(
            configfile=args.configfile,
            repeats=args.repeats,
            seconds=round(statistics.median(plain), 2),
            seconds_with_torch_imported=round(statistics.median(torch_first), 2),
            ratio=round(statistics.median(torch_first) / statistics.median(plain), 2),
        ),
    )


if __name__ == "__main__":
    main()
