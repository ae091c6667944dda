"""Seaborn figures mirroring the paper's Figs. 5-13 (plus a fine-tuning trajectory and image grids).

Every figure function takes a per-seed summary (``tables.summarize``; tidy rows are accepted
and summarized) and writes a PNG (``DPI``) plus a PDF beside it.  Bars are means over seeds
with 95% bootstrap intervals (the seed is the unit, as in the paper).  Each figure draws the runs
of its experiment's table and reads what they vary from the tables' run settings
(``tables.RUN_SETTINGS``: method, mapping, lambda1, fine-tune set kind and domain, tercile, and
whether the erasure, set and fine-tune method are the ones a run gets when it names none), never
from a variant's name; factors a figure does not vary are held at those defaults.
Missing variants give a "no data" panel instead of a crash; input lacking the figure's
metric altogether raises ``ValueError`` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from resurgence.evaluate.base import PRESENCE_METRICS  # noqa: E402
from resurgence.io import atomic_path  # noqa: E402
from resurgence.metrics.tables import (  # noqa: E402
    ACCURACY_METRIC,
    ERASE_SETTINGS,
    RUN_SETTINGS,
    _as_summary,
    _metric_rows,
    final_rows,
    task_label,
    task_sort_key,
)

DPI = 150
FIGSIZE: tuple[float, float] = (11.0, 4.5)  # inches; every data figure uses it (PNG 1650 x 675)
GRID_WIDTH_IN = 10.0
IMAGE_WIDTH_FRACTION = 0.88  # of the grid figure's width; the rest holds row labels
CI = ("ci", 95)
BOOTSTRAP_SEED = 0  # seaborn bootstraps the interval; fix it so reruns give identical files

STATE_LABELS = {"base": "Base model", "erased": "After erasure", "finetuned": "After fine-tuning"}
STATE_COLORS = {"base": "0.25", "erased": "#4C72B0", "finetuned": "#DD8452"}
DOMAIN_TITLES = {"identity": "Identity erasure", "object": "Object erasure"}
ACC_YLABELS = {
    "identity": "Identity accuracy on erased identities",
    "object": "CLIP accuracy on erased objects",
}

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- data shaping


RUN_COLUMNS = ["task", "domain", "erase", "ftset", "ftmethod"]


def _require_settings(rows: pd.DataFrame, figure: str) -> None:
    missing = [c for c in RUN_SETTINGS if c not in rows.columns]
    if missing:
        raise ValueError(
            f"{figure}: input lacks the run settings {missing} (tables.RUN_SETTINGS), which the tables stage "
            "writes: rerun it (snakemake reruns the tables when its runs' settings change)"
        )


def _state_long(summary: pd.DataFrame, role: str, metric: str | Mapping[str, str]) -> pd.DataFrame:
    """Long rows (run columns and settings, seed, state, value): base and erased rows copied into every run.

    Runs are the final fine-tuned ones; a task/erase with no fine-tuned run yet stands in for the
    default fine-tune (its fine-tune settings unset), so its erased (and base) bars still show.
    """
    rows = _metric_rows(summary, role, metric)
    final = final_rows(rows)
    runs = final[[*RUN_COLUMNS, *RUN_SETTINGS]].drop_duplicates(RUN_COLUMNS)
    erased_rows = rows[rows["state"] == "erased"]
    pairs = erased_rows[["task", "domain", "erase", *ERASE_SETTINGS]].drop_duplicates(
        ["task", "domain", "erase"]
    )
    tasks = rows.loc[rows["state"] == "base", ["task", "domain"]].drop_duplicates()
    extra_pairs = pairs.merge(runs[["task", "erase"]].drop_duplicates(), how="left", indicator=True)
    extra_pairs = extra_pairs[extra_pairs["_merge"] == "left_only"].drop(columns="_merge")
    extra_tasks = tasks[~tasks["task"].isin(set(runs["task"]) | set(pairs["task"]))].assign(
        erase="", method="", mapping="", lambda1=np.nan, is_default_erase=True
    )
    extra = pd.concat([extra_pairs, extra_tasks], ignore_index=True)
    extra = extra.assign(
        ftset="",
        ftmethod="",
        ftset_kind="",
        ftset_domain="",
        tercile=np.nan,
        is_default_ftset=True,
        is_default_ftmethod=True,
    )
    runs = pd.concat([runs, extra[[*RUN_COLUMNS, *RUN_SETTINGS]]], ignore_index=True)

    def mean(sel: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
        return sel.groupby([*keys, "seed"], sort=True)["value"].mean().reset_index()

    parts = [
        runs.merge(mean(rows[rows["state"] == "base"], ["task", "domain"]), on=["task", "domain"]).assign(
            state="base"
        ),
        runs.merge(mean(erased_rows, ["task", "domain", "erase"]), on=["task", "domain", "erase"]).assign(
            state="erased"
        ),
        runs.merge(mean(final, RUN_COLUMNS), on=RUN_COLUMNS).assign(state="finetuned"),
    ]
    return pd.concat(parts, ignore_index=True)[[*RUN_COLUMNS, *RUN_SETTINGS, "seed", "state", "value"]]


def _require_metric(summary: pd.DataFrame, metrics: Sequence[str], figure: str) -> None:
    if not summary["metric"].isin(list(metrics)).any():
        names = " or ".join(repr(m) for m in metrics)
        raise ValueError(f"{figure}: input has no rows with metric {names}; cannot draw it")


# --------------------------------------------------------------------------- x-axis variants
# Each returns (sort key, label) for a long row, or None when the row is not part of the figure.

XFunc = Callable[[pd.Series], "tuple[tuple, str] | None"]


def _is_baseline(row: pd.Series, *, erase: bool = True, ftset: bool = True, ftmethod: bool = True) -> bool:
    """Whether a run holds the factors a figure does not vary at their defaults (`tables.RUN_SETTINGS`)."""
    return (
        (not erase or bool(row["is_default_erase"]))
        and (not ftset or bool(row["is_default_ftset"]))
        and (not ftmethod or bool(row["is_default_ftmethod"]))
    )


def _x_task(row: pd.Series) -> tuple[tuple, str] | None:
    return (task_sort_key(row["task"]), task_label(row["task"])) if _is_baseline(row) else None


def _x_mapping(row: pd.Series) -> tuple[tuple, str] | None:
    if not _is_baseline(row, erase=False) or not row["mapping"]:
        return None
    if row["is_default_erase"]:
        return ((0, row["mapping"]), f"{row['mapping']} (default)")
    return ((1, row["mapping"]), row["mapping"])


def _x_lambda(row: pd.Series) -> tuple[tuple, str] | None:
    value = float(row["lambda1"])
    if np.isnan(value) or not _is_baseline(row, erase=False):
        return None
    label = "0" if value == 0 else np.format_float_scientific(value, trim="-", exp_digits=2)
    return ((value,), label)


def _x_ftmethod(row: pd.Series) -> tuple[tuple, str] | None:
    if not row["ftmethod"] or not _is_baseline(row, ftmethod=False):
        return None
    names = {"lora": (0, "LoRA"), "full": (1, "Full")}
    rank, label = names.get(row["ftmethod"], (2, row["ftmethod"]))
    return ((rank, row["ftmethod"]), label)


def _x_tercile(row: pd.Series) -> tuple[tuple, str] | None:
    tercile = float(row["tercile"])
    if np.isnan(tercile) or not _is_baseline(row, ftset=False):
        return None
    return ((int(tercile),), f"Tercile {int(tercile)}")


def _x_domain(row: pd.Series) -> tuple[tuple, str] | None:
    if row["ftset_kind"] != "random" or not _is_baseline(row, ftset=False):
        return None
    if row["ftset_domain"] == row["domain"]:
        return ((0,), "In-domain")
    return ((1,), "Out-of-domain")


# --------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class _BarSpec:
    name: str
    title: str
    xlabel: str
    role: str
    metric: Mapping[str, str]
    x: XFunc
    domains: tuple[str, ...]
    ylabel: Mapping[str, str]
    x_is_task: bool = False
    only_domains_with_data: bool = False


def _write(fig: Figure, out_path: PathLike) -> None:
    """PNG at ``DPI`` plus a PDF beside it, both atomically (fixed size: no tight bbox)."""
    png = Path(out_path)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    with atomic_path(png.with_suffix(".pdf")) as tmp:
        fig.savefig(tmp, format="pdf", dpi=DPI, metadata={"CreationDate": None})


def _no_data(ax, message: str = "no data") -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="0.4", fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])


def _legend(fig: Figure, states: Sequence[str], base_ref: bool) -> None:
    handles = [Patch(facecolor=STATE_COLORS[s], label=STATE_LABELS[s]) for s in states]
    if base_ref:
        handles.append(Line2D([], [], color=STATE_COLORS["base"], linestyle="--", label=STATE_LABELS["base"]))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)


def _with_x(long: pd.DataFrame, spec: _BarSpec) -> pd.DataFrame:
    """Attach x sort keys and labels; rows the figure does not show are dropped."""
    if long.empty:
        return long.assign(xkey=[], x=[])
    keyed = [spec.x(row) for _, row in long.iterrows()]
    out = long[[k is not None for k in keyed]].copy()
    out["xkey"] = [k[0] for k in keyed if k is not None]
    out["x"] = [k[1] for k in keyed if k is not None]
    return out


def _panels(long: pd.DataFrame, spec: _BarSpec) -> list[tuple[str, str | None]]:
    """(domain, task) per panel: one per domain when x is the task, else one per task.

    A domain without data keeps one panel (annotated "no data") unless the spec drops it.
    """
    panels: list[tuple[str, str | None]] = []
    for domain in spec.domains:
        tasks = sorted(long.loc[long["domain"] == domain, "task"].unique(), key=task_sort_key)
        if not tasks and spec.only_domains_with_data:
            continue
        if spec.x_is_task or not tasks:
            panels.append((domain, None))
        else:
            panels.extend((domain, t) for t in tasks)
    return panels or [(spec.domains[0], None)]


def _bar_panel(ax, data: pd.DataFrame, states: Sequence[str], max_chars: int = 52) -> None:
    """Bars per x and state (mean, 95% CI over seeds) with the base model as dashed reference ticks."""
    order = list(dict.fromkeys(x for _, x in sorted(zip(data["xkey"], data["x"], strict=True))))
    bars = data[data["state"].isin(states)]
    if not bars.empty:
        sns.barplot(
            data=bars,
            x="x",
            y="value",
            hue="state",
            order=order,
            hue_order=list(states),
            dodge=True,  # keep slots when one state is missing, so bars stay comparable
            palette=STATE_COLORS,
            errorbar=CI,
            seed=BOOTSTRAP_SEED,
            capsize=0.1,
            err_kws={"linewidth": 1.2},
            ax=ax,
            legend=False,
        )
    else:
        ax.set_xticks(range(len(order)), order)
        ax.set_xlim(-0.5, len(order) - 0.5)
    base = data[data["state"] == "base"].groupby("x")["value"].mean()
    for i, x in enumerate(order):
        if x in base.index and np.isfinite(base[x]):
            ax.hlines(
                base[x], i - 0.45, i + 0.45, colors=STATE_COLORS["base"], linestyles="--", linewidth=1.5
            )
    values = data["value"].dropna()
    if not values.empty and values.min() >= 0 and values.max() <= 1:
        ax.set_ylim(0, 1.02)
    longest = max((len(line) for x in order for line in x.split("\n")), default=0)
    width = longest * len(order)
    if width > max_chars:  # labels would overlap horizontally: slant them, or stand them up when many
        ax.tick_params(axis="x", labelrotation=20 if width <= 2 * max_chars else 90)


def _bar_figure(summary: pd.DataFrame, out_path: PathLike, spec: _BarSpec) -> None:
    s = _as_summary(summary)
    _require_metric(s, sorted(set(spec.metric.values())), spec.name)
    _require_settings(s, spec.name)
    long = _with_x(_state_long(s, spec.role, spec.metric), spec)
    panels = _panels(long, spec)
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    states = ("erased", "finetuned")
    for ax, (domain, task) in zip(axes, panels, strict=True):
        data = long[long["domain"] == domain]
        title = DOMAIN_TITLES.get(domain, domain)
        if task is not None:
            data = data[data["task"] == task]
            title = task_label(task)  # names its domain ("Erase ship", "Erase 10 identities")
        ax.set_title(title)
        if data.empty:
            _no_data(ax)
            continue
        _bar_panel(ax, data, states, max_chars=104 // len(panels))
        ax.set_xlabel(spec.xlabel)
        ax.set_ylabel(spec.ylabel.get(domain, ""))
    fig.suptitle(spec.title)
    _legend(fig, states, base_ref=True)
    _write(fig, out_path)


def _acc_spec(
    name: str,
    title: str,
    xlabel: str,
    x: XFunc,
    domains: tuple[str, ...] = ("object", "identity"),
    x_is_task: bool = False,
    only_domains_with_data: bool = False,
) -> _BarSpec:
    return _BarSpec(
        name,
        title,
        xlabel,
        "erased",
        ACCURACY_METRIC,
        x,
        domains,
        ACC_YLABELS,
        x_is_task=x_is_task,
        only_domains_with_data=only_domains_with_data,
    )


# --------------------------------------------------------------------------- paper figures


def fig5_resurgence(summary: pd.DataFrame, out_path: PathLike) -> None:
    """Fig. 5: accuracy on erased concepts after erasure vs after in-domain fine-tuning, per task."""
    spec = _acc_spec(
        "fig5",
        "Concept resurgence after fine-tuning",
        "Task",
        _x_task,
        ("identity", "object"),
        x_is_task=True,
    )
    _bar_figure(summary, out_path, spec)


def fig6_mapping(summary: pd.DataFrame, out_path: PathLike) -> None:
    """Fig. 6: effect of the mapping concept (erase variants ``mapping_*`` vs ``default``)."""
    _bar_figure(
        summary,
        out_path,
        _acc_spec("fig6", "Effect of the mapping concept", "Mapping concept", _x_mapping),
    )


def fig7_lambda(summary: pd.DataFrame, out_path: PathLike) -> None:
    """Fig. 7: effect of the cross-attention regularization λ1 (erase variants ``lambda1_<value>``)."""
    spec = _acc_spec("fig7", "Effect of regularization λ1 in cross-attention refinement", "λ1", _x_lambda)
    _bar_figure(summary, out_path, spec)


def fig8_ftmethod(summary: pd.DataFrame, out_path: PathLike) -> None:
    """Fig. 8: LoRA vs full-parameter fine-tuning."""
    spec = _acc_spec("fig8", "LoRA vs full fine-tuning", "Fine-tuning algorithm", _x_ftmethod)
    _bar_figure(summary, out_path, spec)


def fig9_terciles(summary: pd.DataFrame, out_path: PathLike) -> None:
    """Fig. 9: fine-tune sets by CLIP-similarity tercile to the erased concepts (``*tercile_<k>``)."""
    spec = _acc_spec(
        "fig9",
        "Similarity of the fine-tuning set to the erased concepts",
        "CLIP-similarity tercile",
        _x_tercile,
    )
    _bar_figure(summary, out_path, spec)


def fig10_domain(summary: pd.DataFrame, out_path: PathLike) -> None:
    """Fig. 10: in-domain vs out-of-domain random fine-tune sets."""
    spec = _acc_spec("fig10", "In-domain vs out-of-domain fine-tuning", "Fine-tuning set", _x_domain)
    _bar_figure(summary, out_path, spec)


def fig11_retained(summary: pd.DataFrame, out_path: PathLike) -> None:
    """Fig. 11: accuracy on *retained* concepts before vs after fine-tuning (App. B)."""
    ylabels = {
        "identity": "Identity accuracy on retained identities",
        "object": "CLIP accuracy on retained objects",
    }
    spec = _BarSpec(
        "fig11", "Accuracy on retained concepts", "Task", "retained", ACCURACY_METRIC, _x_task,
        ("identity", "object"), ylabels, x_is_task=True,
    )  # fmt: skip
    _bar_figure(summary, out_path, spec)


def fig12_clip_score(summary: pd.DataFrame, out_path: PathLike) -> None:
    """Fig. 12: CLIP score on unrelated captions before vs after fine-tuning (App. B)."""
    spec = _BarSpec(
        "fig12", "CLIP score on unrelated captions", "Task", "caption",
        {"identity": "clip_score", "object": "clip_score"}, _x_task, ("identity", "object"),
        {"identity": "CLIP score", "object": "CLIP score"}, x_is_task=True, only_domains_with_data=True,
    )  # fmt: skip
    _bar_figure(summary, out_path, spec)


def fig13_fid(summary: pd.DataFrame, out_path: PathLike) -> None:
    """Fig. 13: FID on unrelated captions before vs after fine-tuning (App. B; lower is better)."""
    spec = _BarSpec(
        "fig13", "FID on unrelated captions (lower is better)", "Task", "caption",
        {"identity": "fid", "object": "fid"}, _x_task, ("identity", "object"),
        {"identity": "FID", "object": "FID"}, x_is_task=True, only_domains_with_data=True,
    )  # fmt: skip
    _bar_figure(summary, out_path, spec)


def fig_trajectory(summary: pd.DataFrame, out_path: PathLike) -> None:
    """Accuracy on erased concepts vs fine-tune step (step 0 = erased model), one line per task.

    Lines are means over seeds with 95% intervals; dotted lines mark each task's base model.
    """
    s = _as_summary(summary)
    _require_metric(s, sorted(set(ACCURACY_METRIC.values())), "trajectory")
    _require_settings(s, "trajectory")
    rows = _metric_rows(s, "erased", ACCURACY_METRIC)
    default_erase = rows["is_default_erase"].astype(bool)
    steps = rows[
        (rows["state"] == "finetuned")
        & default_erase
        & rows["is_default_ftset"].astype(bool)
        & rows["is_default_ftmethod"].astype(bool)
    ]
    steps = steps.groupby(["task", "domain", "step", "seed"], sort=True)["value"].mean().reset_index()
    erased = rows[(rows["state"] == "erased") & default_erase]
    erased = (
        erased.groupby(["task", "domain", "seed"], sort=True)["value"].mean().reset_index().assign(step=0)
    )
    base = rows[rows["state"] == "base"].groupby(["task", "domain"])["value"].mean()
    data = pd.concat([erased, steps], ignore_index=True)
    data["label"] = data["task"].map(task_label)

    fig = Figure(figsize=FIGSIZE, layout="constrained")
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, domain in zip(axes, ("identity", "object"), strict=True):
        d = data[data["domain"] == domain]
        ax.set_title(DOMAIN_TITLES[domain])
        if d.empty:
            _no_data(ax)
            continue
        tasks = sorted(d["task"].unique(), key=task_sort_key)
        labels = [task_label(t) for t in tasks]
        colors = dict(zip(labels, sns.color_palette("colorblind", len(labels)), strict=True))
        sns.lineplot(
            data=d, x="step", y="value", hue="label", hue_order=labels, palette=colors,
            errorbar=CI, seed=BOOTSTRAP_SEED, marker="o", ax=ax,
        )  # fmt: skip
        for task, label in zip(tasks, labels, strict=True):
            if (task, domain) in base.index:
                ax.axhline(base[(task, domain)], color=colors[label], linestyle=":", linewidth=1.2)
        handles, names = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color="0.3", linestyle=":", label=STATE_LABELS["base"]))
        ax.legend(handles=handles, fontsize=8, frameon=False)
        ax.set_xlabel("Fine-tuning step (0 = after erasure)")
        ax.set_ylabel(ACC_YLABELS[domain])
        if d["value"].between(0, 1).all():
            ax.set_ylim(0, 1.02)
    fig.suptitle("Accuracy on erased concepts during fine-tuning")
    _write(fig, out_path)


# --------------------------------------------------------------------------- reversion


REVERSION_PANELS: tuple[tuple[str, str], ...] = (
    ("edit_to_update", "||dE|| / ||dF|| (log)"),
    ("undone_fraction", "Share of dE undone"),
    ("reversion_cosine", "cos(dF, -dE)"),
    ("kv_return", "Erased keys/values: share back"),
)
# Ratios spanning orders of magnitude (MACE's edits are 1 to 1000 fine-tune updates, ESD's under one).
LOG_REVERSION_MEASURES = frozenset({"edit_to_update"})


def fig_reversion(table: pd.DataFrame, out_path: PathLike) -> None:
    """Resurgence (top-1 accuracy points) against how far each run's fine-tune undid its erasure (all
    cross-attention key/value layers together; `resurgence.metrics.reversion`), final weights of every run."""
    final = table[table["is_final"].astype(bool)].copy()
    final["label"] = final["task"].map(task_label)
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    axes = fig.subplots(1, len(REVERSION_PANELS), squeeze=False)[0]
    tasks = sorted(final["task"].unique(), key=task_sort_key)
    labels = [task_label(t) for t in tasks]
    colors = dict(zip(labels, sns.color_palette("colorblind", len(labels)), strict=True))
    for i, (ax, (measure, xlabel)) in enumerate(zip(axes, REVERSION_PANELS, strict=True)):
        d = final.dropna(subset=[measure, "resurgence"])
        if d.empty:
            _no_data(ax)
            continue
        sns.scatterplot(
            data=d, x=measure, y="resurgence", hue="label", hue_order=labels, palette=colors,
            style="ftmethod", ax=ax, legend=i == len(REVERSION_PANELS) - 1,
        )  # fmt: skip
        ax.axhline(0, color="0.6", linewidth=0.8)
        if measure in LOG_REVERSION_MEASURES and (d[measure] > 0).all():
            ax.set_xscale("log")
            ax.axvline(1, color="0.6", linewidth=0.8)  # an edit the size of one fine-tune's update
        else:
            ax.axvline(0, color="0.6", linewidth=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Resurgence (top-1 accuracy, after - before)" if i == 0 else "")
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    fig.suptitle(
        "Does fine-tuning undo the erasure? Erasure edit dE, fine-tune update dF and resurgence, every run"
    )
    _write(fig, out_path)


# --------------------------------------------------------------------------- image grids


def grid_figsize(shapes: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """Figure size (inches) for stacking images of ``(height, width)`` at ``GRID_WIDTH_IN`` wide."""
    image_width = IMAGE_WIDTH_FRACTION * GRID_WIDTH_IN  # the rest is the row-label margin
    height = sum(image_width * h / w for h, w in shapes) + 0.25 * len(shapes) + 0.5
    return (GRID_WIDTH_IN, round(height, 2))


def image_grid_figure(
    grid_pngs: Mapping[str, PathLike], out_path: PathLike, *, title: str | None = None
) -> None:
    """Stack existing image grids (e.g. base / erased / fine-tuned rows, paper Figs. 2-4), labelled by key."""
    if not grid_pngs:
        raise ValueError("image_grid_figure: no grid PNGs given")
    images = []
    target_px = round(IMAGE_WIDTH_FRACTION * GRID_WIDTH_IN * DPI)
    for label, path in grid_pngs.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"image_grid_figure: grid for {label!r} not found: {path}")
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            # Downscale big grids here (PIL's Lanczos is fast); matplotlib's resampler is slow on them.
            if rgb.width > target_px:
                rgb = rgb.resize(
                    (target_px, max(1, round(rgb.height * target_px / rgb.width))), Image.LANCZOS
                )
            images.append((label, np.asarray(rgb)))
    shapes = [img.shape[:2] for _, img in images]
    fig = Figure(figsize=grid_figsize(shapes), layout="constrained")
    axes = fig.subplots(len(images), 1, squeeze=False, height_ratios=[h / w for h, w in shapes])[:, 0]
    for ax, (label, img) in zip(axes, images, strict=True):
        ax.imshow(img, interpolation="none")  # small grids upscale with crisp pixels
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(label, rotation=90, fontsize=11)
    if title:
        fig.suptitle(title)
    _write(fig, out_path)


# --------------------------------------------------------------------------- controls (outside `all`)


def fig_control(summary: pd.DataFrame, out_path: PathLike) -> None:
    """The exact-unlearning control: erased concepts before and after the same fine-tune, erased by a method
    vs in a model that never learned them (tasks with ``erasure: none``: method "none")."""

    def x(row: pd.Series) -> tuple[tuple, str] | None:
        if not _is_baseline(row):
            return None
        if row["method"] == "none":
            return ((1, row["task"]), "Exact unlearning\n(never trained on them)")
        return ((0, row["task"]), METHOD_LABELS.get(row["method"], row["method"]))

    # Both arms side by side in one panel per domain (they erase the same concepts); no empty panels.
    spec = _acc_spec(
        "control",
        "Exact-unlearning control",
        "Erasure",
        x,
        ("identity", "object"),
        x_is_task=True,
        only_domains_with_data=True,
    )
    _bar_figure(summary, out_path, spec)


# Display names of the erasure methods (`study.ERASE_METHODS`), in the order figures draw them.
METHOD_LABELS = {"mace": "MACE", "uce": "UCE", "esd": "ESD", "none": "No edit"}


def method_label(method: str, erase: str, is_default_erase: bool = False) -> str:
    """A method's display name, with its erase variant where that is not the method's only setting
    (ESD's two published variants, esd_x and esd_u, are two bars, not one mean)."""
    label = METHOD_LABELS.get(method, method)
    return label if is_default_erase or erase == method else f"{label} ({erase})"


def fig_methods(summary: pd.DataFrame, out_path: PathLike) -> None:
    """Resurgence by erasure method (Fig. 5's layout): each task's erased concepts after erasure and after
    the same in-domain fine-tune, one bar group per task and method (the runs' ``method`` setting)."""
    order = list(METHOD_LABELS)

    def x(row: pd.Series) -> tuple[tuple, str] | None:
        method = row["method"]
        if not method or not _is_baseline(row, erase=False):
            return None
        rank = order.index(method) if method in order else len(order)
        return (
            (task_sort_key(row["task"]), rank, row["erase"]),
            f"{task_label(row['task'])}\n{method_label(method, row['erase'], bool(row['is_default_erase']))}",
        )

    spec = _acc_spec(
        "methods",
        "Concept resurgence by erasure method",
        "Task and method",
        x,
        ("identity", "object"),
        x_is_task=True,
    )
    _bar_figure(summary, out_path, spec)


def geometry_points(summary: pd.DataFrame, tasks: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Fig. 14's points: per task, seed and metric the erased concepts' value in the base, erased and
    final fine-tuned states of the default run, with the task's ``shared`` value."""
    s = _as_summary(summary)
    _require_settings(s, "fig14")
    s = s[(s["role"] == "erased") & s["task"].isin(list(tasks))]
    if not s.empty:
        keep = [
            r["state"] == "base"
            or (r["state"] == "erased" and bool(r["is_default_erase"]))
            or (r["state"] == "finetuned" and _is_baseline(r))
            for _, r in s.iterrows()
        ]
        s = s[keep]
    rows = pd.concat([s[s["state"].isin(["base", "erased"])], final_rows(s)], ignore_index=True)
    rows["shared"] = rows["task"].map(lambda t: float(tasks[t]["shared"]))
    return rows[["task", "domain", "shared", "state", "metric", "seed", "value"]]


def fig14_geometry(
    summary: pd.DataFrame,
    out_path: PathLike,
    *,
    tasks: Mapping[str, Mapping[str, Any]],
) -> None:
    """Fig. 14: erased concepts' top-1 and true-concept probability, erased vs fine-tuned, against the
    world's shared-structure knob (``tasks[task]["shared"]``), one column per domain."""
    rows = geometry_points(summary, tasks)
    domains = [d for d in ("identity", "object") if (rows["domain"] == d).any()] or ["identity"]
    fig = Figure(figsize=FIGSIZE)
    axes = fig.subplots(2, len(domains), squeeze=False)
    for j, domain in enumerate(domains):
        acc = ACCURACY_METRIC[domain]
        for i, metric in enumerate((acc, PRESENCE_METRICS[acc][0])):
            ax = axes[i][j]
            data = rows[(rows["domain"] == domain) & (rows["metric"] == metric)]
            for state in ("base", "erased", "finetuned"):
                part = data[data["state"] == state]
                if part.empty:
                    continue
                sns.lineplot(
                    data=part,
                    x="shared",
                    y="value",
                    errorbar=CI,
                    seed=BOOTSTRAP_SEED,
                    marker="o",
                    color=STATE_COLORS[state],
                    linestyle="--" if state == "base" else "-",
                    label=state,
                    ax=ax,
                    legend=i == 0 and j == 0,
                )
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("toyworld.knowledge.shared" if i == 1 else "")
            ax.set_ylabel(("top-1 " if i == 0 else "true-concept probability ") + f"({domain})")
            if i == 0:
                ax.set_title(DOMAIN_TITLES[domain])
    fig.suptitle("Resurgence against the concepts' shared structure")
    _write(fig, out_path)


FIGURES: dict[str, Callable[..., None]] = {
    "fig5": fig5_resurgence,
    "fig6": fig6_mapping,
    "fig7": fig7_lambda,
    "fig8": fig8_ftmethod,
    "fig9": fig9_terciles,
    "fig10": fig10_domain,
    "fig11": fig11_retained,
    "fig12": fig12_clip_score,
    "fig13": fig13_fid,
    "trajectory": fig_trajectory,
    "control": fig_control,
    "fig14": fig14_geometry,
    "methods": fig_methods,
}
# Figures that also read the study's task facts (`study.figure_tasks`).
TASK_FIGURES = ("fig14",)

__all__ = [
    "DPI",
    "FIGSIZE",
    "FIGURES",
    "fig5_resurgence",
    "fig6_mapping",
    "fig7_lambda",
    "fig8_ftmethod",
    "fig9_terciles",
    "fig10_domain",
    "fig11_retained",
    "fig12_clip_score",
    "fig13_fid",
    "fig14_geometry",
    "fig_control",
    "fig_methods",
    "geometry_points",
    "fig_reversion",
    "fig_trajectory",
    "grid_figsize",
    "image_grid_figure",
]
