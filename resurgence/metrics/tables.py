"""Tidy evaluation rows -> per-seed summaries -> the resurgence rate.

Evaluation jobs write *tidy* CSVs (one row per model state x concept x prompt x seed x
metric, columns ``TIDY_COLUMNS``).  Everything downstream (tables, figures) starts from
``summarize``, whose unit is the seed, because the paper's 95% intervals are over seeds.
``resurgence_rate`` is the one place in the project where resurgence is defined.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from resurgence.io import atomic_path
from resurgence.phases import WRITE, in_phase

TIDY_COLUMNS: tuple[str, ...] = (
    "task",
    "domain",
    "erase",
    "ftset",
    "ftmethod",
    "state",
    "step",
    "is_final",
    "concept",
    "role",
    "prompt",
    "template",
    "seed",
    "metric",
    "value",
)

STRING_COLUMNS: tuple[str, ...] = (
    "task",
    "domain",
    "erase",
    "ftset",
    "ftmethod",
    "state",
    "concept",
    "role",
    "prompt",
    "template",
    "metric",
)

# Summary rows are keyed by everything that identifies a model state, plus role/metric/seed.
SUMMARY_KEYS: tuple[str, ...] = (
    "task",
    "domain",
    "erase",
    "ftset",
    "ftmethod",
    "state",
    "step",
    "is_final",
    "role",
    "metric",
    "seed",
)
SUMMARY_COLUMNS: tuple[str, ...] = (*SUMMARY_KEYS, "value", "n")

# A fine-tuning run is identified by these; base/erased states are shared between runs.
RUN_KEYS: tuple[str, ...] = ("task", "erase", "ftset", "ftmethod")

# What a run varies, as the study resolved it from the config (`resurgence.study.run_settings`), by the
# column's type: the figures read these, never a variant's name. Erased rows carry their erasure's,
# fine-tuned rows their run's too; base rows none ("", NaN, False).
ERASE_SETTINGS: dict[str, type] = {
    "method": str,  # the erasure method (study.ERASE_METHODS)
    "mapping": str,  # the mapping concept(s) of the erased concepts, "; "-joined
    "lambda1": float,  # MACE's lambda1 (NaN for other methods)
    "is_default_erase": bool,  # the erasure a run gets when it names none
}
FINETUNE_SETTINGS: dict[str, type] = {
    "ftset_kind": str,  # random | tercile
    "ftset_domain": str,  # the domain of the fine-tune set's concepts
    "tercile": float,  # the CLIP-distance tercile of a tercile set (NaN otherwise)
    "is_default_ftset": bool,  # the task's in-domain random set, which a run gets when it names none
    "is_default_ftmethod": bool,
}
RUN_SETTINGS: dict[str, type] = {**ERASE_SETTINGS, **FINETUNE_SETTINGS}

DOMAINS: tuple[str, ...] = ("identity", "object")
STATES: tuple[str, ...] = ("base", "erased", "finetuned")
ROLES: tuple[str, ...] = ("erased", "retained", "caption")
FTMETHODS: tuple[str, ...] = ("lora", "full", "none")
ACCURACY_METRIC: dict[str, str] = {"identity": "identity_acc", "object": "clip_acc"}
# Every measure of an erased concept's presence whose return `resurgence_rate` reports, per domain: the
# top-1 accuracies and their continuous companions (`resurgence.evaluate.base.PRESENCE_METRICS`).
RESURGENCE_METRICS: dict[str, tuple[str, ...]] = {
    "identity": (
        "identity_acc", "identity_prob", "identity_rank",
        "identity_acc_clip", "identity_prob_clip", "identity_rank_clip",
    ),
    "object": ("clip_acc", "clip_prob", "clip_rank"),
}  # fmt: skip

# Recovery is undefined when erasure removed (almost) nothing: dividing by ~0 is noise.
RECOVERY_MIN_GAP = 0.01

# Canonical row order for every table (tidy, summary, resurgence): whichever of these it has.
# SUMMARY_KEYS is its restriction to summary columns, so summaries sort the same either way.
SORT_ORDER: tuple[str, ...] = (
    "task", "domain", "erase", "ftset", "ftmethod", "state", "step", "is_final",
    "role", "metric", "concept", "template", "prompt", "seed",
)  # fmt: skip

RESURGENCE_COLUMNS: tuple[str, ...] = (
    "task",
    "domain",
    "erase",
    "ftset",
    "ftmethod",
    "seed",
    "step",
    "metric",
    "base",
    "erased",
    "finetuned",
    "resurgence",
    "recovery",
)

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- validation


def _to_bool(series: pd.Series, column: str) -> pd.Series:
    """CSV round-trips booleans as text; accept the usual spellings, reject anything else."""
    if series.dtype == bool:
        return series
    mapping = {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False}
    text = series.astype(str).str.strip().str.lower()
    bad = sorted(set(text[~text.isin(list(mapping))]))
    if bad:
        raise ValueError(f"column {column!r} must be boolean; got values {bad[:5]}")
    return text.map(mapping).astype(bool)


def _to_int(series: pd.Series, column: str) -> pd.Series:
    numeric = pd.to_numeric(series, errors="coerce")
    bad = numeric.isna() | (numeric != np.round(numeric))
    if bad.any():
        raise ValueError(
            f"column {column!r} must be integer; got values {sorted(set(series[bad].astype(str)))[:5]}"
        )
    return numeric.astype(np.int64)


def _check_values(df: pd.DataFrame, column: str, allowed: Sequence[str]) -> None:
    bad = sorted(set(df[column]) - set(allowed))
    if bad:
        raise ValueError(f"column {column!r} has unknown values {bad}; allowed: {list(allowed)}")


def validate_tidy(df: pd.DataFrame, columns: Sequence[str] = TIDY_COLUMNS) -> pd.DataFrame:
    """Check required columns and coerce dtypes, so every later groupby sees the same types.

    Raises ``ValueError`` naming missing columns or offending values.  Returns a copy.
    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"missing columns: {missing}")
    out = df.copy()
    for col in STRING_COLUMNS:
        if col in out.columns:
            out[col] = out[col].fillna("").astype(str)
    out["step"] = _to_int(out["step"], "step")
    out["seed"] = _to_int(out["seed"], "seed")
    out["is_final"] = _to_bool(out["is_final"], "is_final")
    value = pd.to_numeric(out["value"], errors="coerce")
    bad = value.isna() & out["value"].notna() & (out["value"].astype(str).str.strip().str.lower() != "nan")
    if bad.any():
        raise ValueError(
            f"column 'value' must be numeric; got {sorted(set(out['value'][bad].astype(str)))[:5]}"
        )
    out["value"] = value.astype(float)
    _check_values(out, "domain", DOMAINS)
    _check_values(out, "state", STATES)
    _check_values(out, "role", ROLES)
    _check_values(out, "ftmethod", FTMETHODS)
    return _coerce_settings(out)


def _coerce_settings(df: pd.DataFrame) -> pd.DataFrame:
    """`RUN_SETTINGS` columns, where present, in their types (CSV reads them as text; "" is not set)."""
    for col, kind in RUN_SETTINGS.items():
        if col not in df.columns:
            continue
        if kind is str:
            df[col] = df[col].fillna("").astype(str)
        elif kind is float:
            df[col] = pd.to_numeric(df[col].replace("", np.nan), errors="raise").astype(float)
        else:
            df[col] = _to_bool(df[col].replace("", False).fillna(False), col)
    return df


def with_run_settings(df: pd.DataFrame, runs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """``df`` (tidy or summary rows) with the `RUN_SETTINGS` of ``runs`` (dicts of `RUN_KEYS` and
    settings): fine-tuned rows get their run's, erased rows their erasure's, base rows none."""
    table = pd.DataFrame([dict(r) for r in runs], columns=[*RUN_KEYS, *RUN_SETTINGS])
    out = df.drop(columns=[c for c in RUN_SETTINGS if c in df.columns]).reset_index(drop=True)
    rows = out.assign(_row=np.arange(len(out)))
    erase = table[["task", "erase", *ERASE_SETTINGS]].drop_duplicates(["task", "erase"])
    finetune = table[[*RUN_KEYS, *FINETUNE_SETTINGS]].drop_duplicates(list(RUN_KEYS))
    by_erase = rows.loc[rows["state"] != "base", ["_row", "task", "erase"]].merge(erase, how="left")
    by_run = rows.loc[rows["state"] == "finetuned", ["_row", *RUN_KEYS]].merge(finetune, how="left")
    out = rows.merge(by_erase.drop(columns=["task", "erase"]), on="_row", how="left")
    out = out.merge(by_run.drop(columns=list(RUN_KEYS)), on="_row", how="left").drop(columns="_row")
    return _coerce_settings(out)


def _read_csvs(paths: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no CSV paths given")
    frames = [
        # Keep "" (FID rows' empty concept/prompt) and "none" as strings; only `value` may be NaN.
        pd.read_csv(p, keep_default_na=False, na_values={"value": ["", "nan", "NaN"]}, dtype=str)
        for p in paths
    ]
    return pd.concat(frames, ignore_index=True)


def read_tidy(paths: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    """Concatenate tidy CSVs (one per evaluation job) and validate them (``validate_tidy``)."""
    return validate_tidy(_read_csvs(paths))


def read_summary(paths: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    """Read CSVs written by ``write_summary`` back with the same dtypes ``summarize`` returns."""
    df = validate_tidy(_read_csvs(paths), columns=SUMMARY_COLUMNS)
    df["n"] = _to_int(df["n"], "n")
    return df


# --------------------------------------------------------------------------- summaries


def _sorted(df: pd.DataFrame, keys: Sequence[str] = SORT_ORDER) -> pd.DataFrame:
    keys = [k for k in keys if k in df.columns]
    return df.sort_values(list(keys), kind="mergesort").reset_index(drop=True)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ``value`` over concepts, prompts and templates for each model state x role x metric x seed.

    The seed is kept as a row key because it is the unit of the 95% intervals; ``n`` counts
    the (non-NaN) tidy rows averaged.  Rows are sorted by ``SUMMARY_KEYS``.
    """
    tidy = validate_tidy(df)
    settings = [c for c in RUN_SETTINGS if c in tidy.columns]  # functions of the keys: carried along
    out = (
        tidy.groupby([*SUMMARY_KEYS, *settings], dropna=False, sort=True)["value"]
        .agg(value="mean", n="count")
        .reset_index()
    )
    out["n"] = out["n"].astype(np.int64)
    return _sorted(out[[*SUMMARY_COLUMNS, *settings]], SUMMARY_KEYS)


def _as_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Accept either tidy rows or a summary; tidy rows (they have ``concept``) get summarized."""
    if "concept" in df.columns:
        return summarize(df)
    return validate_tidy(df, columns=(*SUMMARY_KEYS, "value"))


def _metric_rows(summary: pd.DataFrame, role: str, metric: str | Mapping[str, str]) -> pd.DataFrame:
    """Rows of ``role`` whose metric is ``metric`` (or ``metric[domain]`` when a mapping)."""
    rows = summary[summary["role"] == role]
    wanted = rows["domain"].map(dict(metric)) if isinstance(metric, Mapping) else metric
    return rows[rows["metric"] == wanted]


def final_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Fine-tuned rows of each run's final checkpoint: ``is_final`` and, should several steps be
    flagged final, only the largest step per run and seed (never a mix of checkpoints)."""
    ft = summary[(summary["state"] == "finetuned") & summary["is_final"]]
    last = ft.groupby(["task", "domain", "erase", "ftset", "ftmethod", "seed"])["step"].transform("max")
    return ft[ft["step"] == last]


def resurgence_rate(summary: pd.DataFrame) -> pd.DataFrame:
    """Per fine-tuning run, seed and presence measure, how much of the *erased* concepts came back.

    Definition (the only one in the project).  On rows with role ``"erased"`` and each metric of
    ``RESURGENCE_METRICS[domain]`` the summary holds (the task's top-1 accuracy, ``ACCURACY_METRIC``,
    first among them; then the true concept's probability and rank, and CLIP zero-shot's for
    identities), per (task, erase, ftset, ftmethod, seed, metric):

    * ``base``      the metric in the base model (state "base"; same task and seed),
    * ``erased``    after erasure (state "erased"; same task, erase and seed),
    * ``finetuned`` after fine-tuning (state "finetuned", final checkpoint: ``final_rows``),
    * ``resurgence = finetuned - erased`` (for accuracies, the before-vs-after gap the paper's figures
      show; a rank falls as the concept returns, so its resurgence is negative),
    * ``recovery = resurgence / (base - erased)``, the fraction of what erasure removed that came
      back; NaN when ``|base - erased| <= 0.01`` (nothing was erased).

    One row per fine-tuned run, seed and metric (runs without a base/erased match get NaN there);
    tidy input is summarized first.  Sorted by run keys, seed and metric.
    """
    s = _as_summary(summary)
    s = s[s["role"] == "erased"]
    s = s[[m in RESURGENCE_METRICS.get(d, ()) for d, m in zip(s["domain"], s["metric"], strict=True)]]
    run = ["task", "domain", "erase", "ftset", "ftmethod", "seed", "metric"]
    ft = (
        final_rows(s)
        .groupby(run, sort=True)
        .agg(step=("step", "max"), finetuned=("value", "mean"))
        .reset_index()
    )
    erased = (
        s[s["state"] == "erased"]
        .groupby(["task", "domain", "erase", "seed", "metric"], sort=True)["value"]
        .mean()
        .rename("erased")
        .reset_index()
    )
    base = (
        s[s["state"] == "base"]
        .groupby(["task", "domain", "seed", "metric"], sort=True)["value"]
        .mean()
        .rename("base")
        .reset_index()
    )
    out = ft.merge(erased, on=["task", "domain", "erase", "seed", "metric"], how="left").merge(
        base, on=["task", "domain", "seed", "metric"], how="left"
    )
    out["resurgence"] = out["finetuned"] - out["erased"]
    gap = out["base"] - out["erased"]
    out["recovery"] = (out["resurgence"] / gap).where(gap.abs() > RECOVERY_MIN_GAP)
    out["step"] = out["step"].astype(np.int64)
    return _sorted(out[list(RESURGENCE_COLUMNS)])


def headline(resurgence: pd.DataFrame) -> pd.DataFrame:
    """Per fine-tuning run, the top-1 accuracy (`ACCURACY_METRIC` of its domain) on the erased concepts
    in the base, erased and fine-tuned models, as the mean over seeds (``seeds``: how many)."""
    acc = resurgence[resurgence["metric"] == resurgence["domain"].map(ACCURACY_METRIC)]
    return (
        acc.groupby(list(RUN_KEYS), sort=True)
        .agg(
            base=("base", "mean"),
            erased=("erased", "mean"),
            finetuned=("finetuned", "mean"),
            seeds=("seed", "nunique"),
        )
        .reset_index()
    )


# --------------------------------------------------------------------------- writing


@in_phase(WRITE)
def write_table(df: pd.DataFrame, path: PathLike, sort_by: Sequence[str] | None = None) -> None:
    """Write ``df`` as CSV atomically, rows sorted so reruns produce byte-identical files.

    Without ``sort_by`` rows are ordered by whichever ``SORT_ORDER`` columns ``df`` has.
    """
    keys = list(sort_by) if sort_by is not None else [c for c in SORT_ORDER if c in df.columns]
    out = _sorted(df, keys)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, lineterminator="\n")


@in_phase(WRITE)
def write_summary(df: pd.DataFrame, path: PathLike) -> None:
    """Write a table (summary, resurgence rates, or selected tidy rows) as deterministic sorted CSV.

    Writes ``df`` as given (no summarizing); read summaries back with ``read_summary``.
    """
    write_table(df, path)


@in_phase(WRITE)
def write_tidy(df: pd.DataFrame, path: PathLike) -> None:
    """Validate and write tidy rows (for evaluation jobs), sorted, columns in ``TIDY_COLUMNS`` order."""
    tidy = validate_tidy(df)
    extra = [c for c in tidy.columns if c not in TIDY_COLUMNS]
    write_table(tidy[[*TIDY_COLUMNS, *extra]], path)


# --------------------------------------------------------------------------- experiments


@dataclass
class Experiment:
    """A named group of fine-tuning runs that one paper figure compares.

    ``runs`` are dicts with the ``RUN_KEYS`` (task, erase, ftset, ftmethod).
    """

    name: str
    figure: str
    runs: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i, run in enumerate(self.runs):
            missing = [k for k in RUN_KEYS if k not in run]
            if missing:
                raise ValueError(f"experiment {self.name!r} run {i} misses keys {missing}")
        self.runs = [{k: str(run[k]) for k in RUN_KEYS} for run in self.runs]

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Experiment:
        """Build from a config mapping ``{name, figure, runs: [...]}``."""
        return cls(name=str(d["name"]), figure=str(d["figure"]), runs=[dict(r) for r in d.get("runs", [])])


def _isin(df: pd.DataFrame, cols: Sequence[str], keys: Iterable[tuple[str, ...]]) -> np.ndarray:
    keys = list(keys)
    if not keys or df.empty:
        return np.zeros(len(df), dtype=bool)
    index = pd.MultiIndex.from_frame(df[list(cols)].astype(str))
    return index.isin(keys)


def select(df: pd.DataFrame, experiment: Experiment) -> pd.DataFrame:
    """Rows (tidy or summary) that belong to ``experiment``'s runs, in their original order.

    Fine-tuned rows match a run on all of task/erase/ftset/ftmethod; erased-state rows belong
    to every run with the same task and erase; base rows to every run with the same task.
    """
    runs = [tuple(r[k] for k in RUN_KEYS) for r in experiment.runs]
    state = df["state"].to_numpy()
    finetuned = (state == "finetuned") & _isin(df, RUN_KEYS, runs)
    erased = (state == "erased") & _isin(df, ("task", "erase"), {r[:2] for r in runs})
    base = (state == "base") & _isin(df, ("task",), {r[:1] for r in runs})
    return df[finetuned | erased | base].reset_index(drop=True)


# --------------------------------------------------------------------------- naming helpers

# Single-object tasks in the order the paper lists them; others follow alphabetically.
OBJECT_TASK_ORDER: tuple[str, ...] = ("ship", "automobile", "bird")
_DOMAIN_NOUNS = {"identity": ("identity", "identities"), "object": ("object", "objects")}


def _split_task(task: str) -> tuple[str, str]:
    domain, _, rest = task.partition("_")
    return domain, rest


def task_sort_key(task: str) -> tuple:
    """Identity tasks by size, then named objects in paper order, then multi-object tasks by size."""
    domain, rest = _split_task(task)
    domain_rank = DOMAINS.index(domain) if domain in DOMAINS else len(DOMAINS)
    if rest.isdigit():
        count = int(rest)
        return (domain_rank, 0 if domain == "identity" else 2, count, rest)
    rank = OBJECT_TASK_ORDER.index(rest) if rest in OBJECT_TASK_ORDER else len(OBJECT_TASK_ORDER)
    return (domain_rank, 1, rank, rest)


def task_label(task: str) -> str:
    """``identity_10`` -> "Erase 10 identities", ``object_ship`` -> "Erase ship"."""
    domain, rest = _split_task(task)
    if rest.isdigit() and domain in _DOMAIN_NOUNS:
        singular, plural = _DOMAIN_NOUNS[domain]
        return f"Erase {rest} {singular if int(rest) == 1 else plural}"
    if not rest:
        return task
    return "Erase " + re.sub(r"_+", " ", rest)
