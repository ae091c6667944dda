"""Progress bars that also show in Snakemake logs.

tqdm hides itself when stderr is not a terminal; a job's log is a file, and a researcher
tailing it wants to see a long stage move. Off a terminal we keep the bar on, refreshed at
most every 30 s and in ASCII, so a log gains a line fragment per half minute, not per step.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

LOG_REFRESH_S = 30.0


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """`tqdm` that stays on in log files (rarely refreshed there) and is off when ``enabled`` is False."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", LOG_REFRESH_S)
        kwargs.setdefault("ascii", True)
    return tqdm(iterable, disable=not enabled, **kwargs)
