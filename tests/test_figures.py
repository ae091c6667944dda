"""Every paper figure renders from a synthetic summary, tolerates missing variants, and names missing metrics."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from resurgence.metrics import figures
from resurgence.metrics.figures import (
    DPI,
    FIGSIZE,
    FIGURES,
    fig5_resurgence,
    fig7_lambda,
    fig13_fid,
    grid_figsize,
    image_grid_figure,
)
from resurgence.metrics.tables import ACCURACY_METRIC, RUN_KEYS, SUMMARY_KEYS, with_run_settings

SEEDS = (0, 1, 2)
DOMAIN = {"identity_1": "identity", "identity_10": "identity", "object_ship": "object"}
IN_DOMAIN = {"identity": "random_identity", "object": "random_object"}
OUT_DOMAIN = {"identity": "random_object", "object": "random_identity"}


def _rows(
    task: str, erase: str, ftset: str, ftmethod: str, state: str, step: int, final: bool, level: float
) -> list[dict]:
    domain = DOMAIN[task]
    common = dict(
        task=task,
        domain=domain,
        erase=erase,
        ftset=ftset,
        ftmethod=ftmethod,
        state=state,
        step=step,
        is_final=final,
    )
    out = []
    for seed in SEEDS:
        jitter = 0.02 * (seed - 1)
        out.append(
            dict(common, role="erased", metric=ACCURACY_METRIC[domain], seed=seed, value=level + jitter)
        )
        out.append(
            dict(common, role="retained", metric=ACCURACY_METRIC[domain], seed=seed, value=0.85 + jitter)
        )
        if domain == "identity":
            out.append(dict(common, role="caption", metric="clip_score", seed=seed, value=0.30 + jitter / 10))
            if state != "base":
                out.append(
                    dict(common, role="caption", metric="fid", seed=seed, value=20.0 + 10 * level + seed)
                )
    return out


def make_summary() -> pd.DataFrame:
    """Per-seed summary covering every figure's variants (the shape ``tables.summarize`` returns).

    identity_10 and object_ship get every variant (as in the paper's Secs. 4-5); identity_1 only
    the default run, so variant figures also meet a task with a single variant.
    """
    rows: list[dict] = []
    for task, domain in DOMAIN.items():
        rows += _rows(task, "none", "none", "none", "base", 0, False, 0.9)
        rows += _rows(task, "default", "none", "none", "erased", 0, False, 0.05)
        rows += _rows(task, "default", IN_DOMAIN[domain], "lora", "finetuned", 200, True, 0.3)
        for step, level in ((50, 0.1), (100, 0.2), (150, 0.25)):
            rows += _rows(task, "default", IN_DOMAIN[domain], "lora", "finetuned", step, False, level)
        if task == "identity_1":
            continue
        for i, erase in enumerate(
            ["mapping_object", "lambda1_0", "lambda1_0.0001", "lambda1_0.01", "lambda1_1"], 1
        ):
            rows += _rows(task, erase, "none", "none", "erased", 0, False, 0.05 + 0.02 * i)
            rows += _rows(task, erase, IN_DOMAIN[domain], "lora", "finetuned", 200, True, 0.3 + 0.05 * i)
        rows += _rows(task, "uce", "none", "none", "erased", 0, False, 0.02)
        rows += _rows(task, "uce", IN_DOMAIN[domain], "lora", "finetuned", 200, True, 0.6)
        rows += _rows(task, "default", IN_DOMAIN[domain], "full", "finetuned", 200, True, 0.4)
        rows += _rows(task, "default", OUT_DOMAIN[domain], "lora", "finetuned", 200, True, 0.1)
        for k in (1, 2, 3):
            rows += _rows(task, "default", f"tercile_{k}", "lora", "finetuned", 200, True, 0.25 + 0.02 * k)
    df = pd.DataFrame(rows)
    df["n"] = 4
    runs = df.loc[df["state"] == "finetuned", list(RUN_KEYS)].drop_duplicates()
    df = with_run_settings(df, [dict(r, **run_settings(**r)) for r in runs.to_dict("records")])
    return df.sort_values(list(SUMMARY_KEYS)).reset_index(drop=True)


def run_settings(task: str, erase: str, ftset: str, ftmethod: str) -> dict:
    """What `study.run_settings` resolves for these runs; identity_1 plays the never-trained control model."""
    domain = DOMAIN[task]
    method = "none" if task == "identity_1" else ("uce" if erase == "uce" else "mace")
    tercile = float(ftset.split("_")[1]) if ftset.startswith("tercile") else np.nan
    return dict(
        method=method,
        mapping="an object"
        if erase == "mapping_object"
        else {"identity": "a person", "object": "ground"}[domain],
        lambda1=float(erase.split("_")[1])
        if erase.startswith("lambda1")
        else (1e-4 if method == "mace" else np.nan),
        is_default_erase=erase == "default",
        ftset_kind="tercile" if ftset.startswith("tercile") else "random",
        ftset_domain=domain if ftset.startswith("tercile") else ftset.split("_")[1],
        tercile=tercile,
        is_default_ftset=ftset == IN_DOMAIN[domain],
        is_default_ftmethod=ftmethod == "lora",
    )


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    return make_summary()


EXPECTED_PX = (1650, 675)  # FIGSIZE (11 x 4.5 in) at 150 dpi; fixed, no tight bbox


def _check_outputs(png) -> None:
    pdf = png.with_suffix(".pdf")
    assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000
    assert pdf.read_bytes().startswith(b"%PDF")
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert im.size == EXPECTED_PX == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
    assert not list(png.parent.glob(".*.tmp"))


# What `study.figure_tasks` gives the geometry figure.
TASKS = {
    "identity_1": {"variant": "exact", "shared": 0.0},
    "identity_10": {"variant": None, "shared": 0.83},
    "object_ship": {"variant": None, "shared": 0.83},
}


def test_dispatcher_covers_every_paper_figure() -> None:
    assert set(FIGURES) == {f"fig{i}" for i in range(5, 15)} | {"trajectory", "control", "methods"}
    assert set(figures.TASK_FIGURES) == {"fig14"}


def test_methods_figure_draws_each_task_once_per_method(summary: pd.DataFrame, tmp_path, monkeypatch) -> None:
    drawn = []
    monkeypatch.setattr(figures, "_write", lambda fig, out: drawn.append(fig))
    # the methods experiment's table: each task's default erasure and UCE's (its tables stage selects them)
    figures.fig_methods(summary[summary["erase"].isin(["none", "default", "uce"])], tmp_path / "m.png")
    (fig,) = drawn
    labels = {
        ax.get_title(): [t.get_text() for t in ax.get_xticklabels()] for ax in fig.axes if ax.get_title()
    }
    ident = next(v for k, v in labels.items() if "Identity" in k)
    # identity_1 (no edit) first, then identity_10 by MACE and by UCE
    assert [x.split("\n")[-1] for x in ident] == ["No edit", "MACE", "UCE"]
    obj = next(v for k, v in labels.items() if "Object" in k)
    assert [x.split("\n")[-1] for x in obj] == ["MACE", "UCE"]
    # the UCE bars are the uce rows' values: erased 0.02 and fine-tuned 0.6 (seed mean)
    heights = sorted(round(b.get_height(), 3) for ax in fig.axes for b in ax.patches if b.get_height() > 0)
    assert 0.02 in heights and 0.6 in heights


def test_control_figure_puts_both_arms_in_one_panel_per_domain_with_data(
    summary: pd.DataFrame, tmp_path, monkeypatch
) -> None:
    """The control's two arms (MACE-erased identity_10, never-trained identity_1) share one identity panel,
    so their bars compare on one axis; a domain without control runs draws no empty panel."""
    drawn = []
    monkeypatch.setattr(figures, "_write", lambda fig, out: drawn.append(fig))
    only = summary[summary["task"].isin(["identity_1", "identity_10"])]
    figures.fig_control(only, tmp_path / "c.png")
    (fig,) = drawn
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 1 and "Identity" in titled[0].get_title()
    labels = [t.get_text() for t in titled[0].get_xticklabels()]
    assert labels == ["MACE", "Exact unlearning\n(never trained on them)"]
    # erased 0.05 and fine-tuned 0.3 (seed means) for both arms: four bars
    heights = sorted(round(b.get_height(), 3) for b in titled[0].patches if b.get_height() > 0)
    assert heights == [0.05, 0.05, 0.3, 0.3]


def test_methods_figure_keeps_a_methods_variants_apart(summary: pd.DataFrame, tmp_path, monkeypatch) -> None:
    """ESD's two variants (two erase variants of one method) are two bars with their own values."""
    uce = summary[(summary["task"] == "identity_10") & (summary["erase"] == "uce")]
    esd = pd.concat(
        [
            uce.assign(erase="esd_x", method="esd"),
            uce.assign(
                erase="esd_u", method="esd", value=uce["value"].where(uce["state"] != "finetuned", 0.8)
            ),
        ]
    )
    # identity_10's MACE and UCE rows are left out: its panel shows ESD's two variants beside identity_1
    rest = summary[~((summary["task"] == "identity_10") & (summary["state"] != "base"))]
    drawn = []
    monkeypatch.setattr(figures, "_write", lambda fig, out: drawn.append(fig))
    figures.fig_methods(pd.concat([rest, esd]), tmp_path / "m.png")
    (fig,) = drawn
    ax = next(a for a in fig.axes if "Identity" in a.get_title())
    assert [t.get_text().split("\n")[-1] for t in ax.get_xticklabels()] == [
        "No edit",
        "ESD (esd_u)",
        "ESD (esd_x)",
    ]
    heights = {round(b.get_height(), 3) for b in ax.patches}
    assert {0.6, 0.8} <= heights  # esd_x's fine-tuned mean and esd_u's, not their average 0.7
    assert 0.7 not in heights


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_writes_png_and_pdf(name: str, summary: pd.DataFrame, tmp_path) -> None:
    png = tmp_path / "figs" / f"{name}.png"
    extra = {"tasks": TASKS} if name in figures.TASK_FIGURES else {}
    FIGURES[name](summary, png, **extra)
    _check_outputs(png)


def test_geometry_points_are_the_baseline_runs_states_at_each_knob_value(summary: pd.DataFrame) -> None:
    pts = figures.geometry_points(summary, TASKS)
    assert set(pts["task"]) == set(TASKS)
    assert set(pts["state"]) == {"base", "erased", "finetuned"}
    fine = pts[pts["state"] == "finetuned"]
    # only the baseline run (default erasure, in-domain set, LoRA) at its final step: level 0.3 +- jitter
    assert len(fine) == len(TASKS) * len(SEEDS)
    np.testing.assert_allclose(sorted(fine[fine["task"] == "identity_10"]["value"]), [0.28, 0.30, 0.32])
    erased = pts[(pts["state"] == "erased") & (pts["task"] == "object_ship")]
    np.testing.assert_allclose(sorted(erased["value"]), [0.03, 0.05, 0.07])
    assert dict(zip(pts["task"], pts["shared"], strict=True)) == {t: v["shared"] for t, v in TASKS.items()}


def test_missing_variants_give_no_data_panels_not_crashes(summary: pd.DataFrame, tmp_path) -> None:
    # Only the identity tasks' default run: object panels are empty, fig7 has no λ1 variants at all.
    only = summary[(summary.domain == "identity") & summary.erase.isin(["none", "default"])]
    for name in ("fig5", "fig7", "trajectory"):
        FIGURES[name](only, tmp_path / f"{name}.png")
        _check_outputs(tmp_path / f"{name}.png")
    # Erased models without any fine-tuned run yet still plot (their baseline run is implied).
    not_tuned = summary[summary.state != "finetuned"]
    fig5_resurgence(not_tuned, tmp_path / "early.png")
    _check_outputs(tmp_path / "early.png")


def test_figures_accept_tidy_rows(summary: pd.DataFrame, tmp_path) -> None:
    per_concept = [summary.assign(concept=f"c{i}", prompt=f"p{i}", template="{}") for i in range(2)]
    tidy = pd.concat(per_concept, ignore_index=True).drop(columns="n")
    fig7_lambda(tidy, tmp_path / "fig7.png")
    _check_outputs(tmp_path / "fig7.png")


def test_missing_metric_raises_naming_it(summary: pd.DataFrame, tmp_path) -> None:
    no_fid = summary[summary.metric != "fid"]
    with pytest.raises(ValueError, match="'fid'"):
        fig13_fid(no_fid, tmp_path / "fig13.png")
    with pytest.raises(ValueError, match="'clip_score'"):
        FIGURES["fig12"](summary[summary.metric != "clip_score"], tmp_path / "fig12.png")
    only_fid = summary[summary.metric == "fid"]
    for name in ("fig5", "fig11", "trajectory"):
        with pytest.raises(ValueError, match="'clip_acc' or 'identity_acc'"):
            FIGURES[name](only_fid, tmp_path / f"{name}.png")
    assert not (tmp_path / "fig13.png").exists()


def test_state_rows_are_shared_by_every_run(summary: pd.DataFrame) -> None:
    """Base and erased bars are copied into each run so before/after sit side by side per variant."""
    long = figures._state_long(summary, "erased", ACCURACY_METRIC)
    ship = long[(long.task == "object_ship") & (long.erase == "default")]
    runs = set(zip(ship.ftset, ship.ftmethod, strict=True))
    assert (
        ("random_object", "lora") in runs
        and ("tercile_2", "lora") in runs
        and ("random_object", "full") in runs
    )
    for _, run in ship.groupby(["ftset", "ftmethod"]):
        assert sorted(run.state.unique()) == ["base", "erased", "finetuned"]
        assert len(run) == 3 * len(SEEDS)  # intermediate checkpoints are not in the bars
        np.testing.assert_allclose(run[run.state == "erased"].value.mean(), 0.05)


def test_image_grid_figure_stacks_labelled_grids(tmp_path) -> None:
    rng = np.random.default_rng(0)
    shapes = {"SD (base)": (64, 256), "After erasure": (64, 256), "After fine-tuning": (128, 256)}
    paths = {}
    for i, (label, (h, w)) in enumerate(shapes.items()):
        paths[label] = tmp_path / f"grid{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[label])
    out = tmp_path / "grids" / "fig2.png"
    image_grid_figure(paths, out, title="Erase 10 identities")
    width, height = grid_figsize(list(shapes.values()))
    assert width * DPI == 1500
    pdf = out.with_suffix(".pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    with Image.open(out) as im:
        assert im.size[0] == 1500 and abs(im.size[1] - height * DPI) <= 1
    with pytest.raises(FileNotFoundError, match="After erasure"):
        image_grid_figure({"After erasure": tmp_path / "missing.png"}, tmp_path / "x.png")
    with pytest.raises(ValueError):
        image_grid_figure({}, tmp_path / "x.png")


def test_lambda_axis_is_ordered_numerically() -> None:
    flags = dict(is_default_erase=False, is_default_ftset=True, is_default_ftmethod=True)
    rows = [figures._x_lambda(pd.Series(dict(flags, lambda1=v))) for v in (1.0, 0.0, 1e-3, np.nan)]
    assert rows[-1] is None  # not a MACE erasure
    assert [label for _, label in sorted(r for r in rows if r)] == ["0", "1e-03", "1e+00"]
    assert list(itertools.islice(FIGURES, 1)) == ["fig5"]


def test_figures_are_byte_reproducible(summary: pd.DataFrame, tmp_path) -> None:
    """Fixed bootstrap seed and sorted inputs: reruns (and shuffled rows) give identical files."""
    fig5_resurgence(summary, tmp_path / "a.png")
    fig5_resurgence(summary.sample(frac=1.0, random_state=0), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()


def test_reversion_figure_plots_the_edit_to_update_ratio_on_a_log_axis(tmp_path, monkeypatch) -> None:
    runs = [
        ("identity_10", "esd_x", 0.5, 0.4),
        ("identity_10", "default", 60.0, 0.0),
        ("object_ship", "default", 3.0, 0.0),
    ]
    table = pd.DataFrame(
        [
            dict(task=t, erase=e, ftset="random_identity", ftmethod="lora", step=200, is_final=True,
                 edit_to_update=r, undone_fraction=0.1, reversion_cosine=0.05, kv_return=0.2, resurgence=res)
            for t, e, r, res in runs
        ]
        + [dict(task="identity_10", erase="esd_x", ftset="random_identity", ftmethod="lora", step=50,
                is_final=False, edit_to_update=2.0, undone_fraction=0.0, reversion_cosine=0.0, kv_return=0.0,
                resurgence=float("nan"))]
    )  # fmt: skip
    drawn = []
    monkeypatch.setattr(figures, "_write", lambda fig, out: drawn.append(fig))
    figures.fig_reversion(table, tmp_path / "r.png")
    (fig,) = drawn
    first = fig.axes[0]
    assert first.get_xscale() == "log" and [a.get_xscale() for a in fig.axes[1:4]] == ["linear"] * 3
    xs = sorted(float(x) for c in first.collections for x, _ in c.get_offsets())
    assert xs == [0.5, 3.0, 60.0]  # the final step of each run, not the step-50 checkpoint


def test_figures_read_run_settings_not_variant_names(summary: pd.DataFrame, tmp_path, monkeypatch) -> None:
    """Renaming variants and fine-tune sets in the config moves nothing: the axes come from the settings."""
    names = {
        "erase": {
            "lambda1_0.01": "weak",
            "lambda1_1": "strong",
            "mapping_object": "m2",
            "default": "base_mace",
        },
        "ftset": {"random_identity": "ids", "random_object": "objs", "tercile_2": "middle"},
    }
    # each figure gets its experiment's table (fig6: the default and the mapping variant; see config.yaml)
    tables = {
        "fig6": summary[summary["erase"].isin(["none", "default", "mapping_object"])],
        "fig7": summary,
        "fig9": summary,
        "fig10": summary,
    }
    labels = {}
    for fig_name, table in tables.items():
        for when, frame in (("before", table), ("after", table.replace(names))):
            drawn = []
            monkeypatch.setattr(figures, "_write", lambda fig, out, drawn=drawn: drawn.append(fig))
            FIGURES[fig_name](frame, tmp_path / f"{fig_name}.png")
            labels[when, fig_name] = [
                (ax.get_title(), [t.get_text() for t in ax.get_xticklabels()]) for ax in drawn[0].axes
            ]
        assert labels["after", fig_name] == labels["before", fig_name], fig_name
    assert ("Erase ship", ["ground (default)", "an object"]) in labels["after", "fig6"]
    assert ("Erase ship", ["0", "1e-04", "1e-02", "1e+00"]) in labels["after", "fig7"]
    assert ("Erase ship", ["In-domain", "Out-of-domain"]) in labels["after", "fig10"]


def test_figures_without_run_settings_say_which_stage_writes_them(summary: pd.DataFrame, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"lacks the run settings .*'lambda1'.*tables stage"):
        fig7_lambda(summary.drop(columns="lambda1"), tmp_path / "fig7.png")
