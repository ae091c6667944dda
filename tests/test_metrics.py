"""Tidy rows -> summary -> resurgence rate, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from resurgence.metrics.tables import (
    ACCURACY_METRIC,
    SUMMARY_COLUMNS,
    TIDY_COLUMNS,
    Experiment,
    read_summary,
    read_tidy,
    resurgence_rate,
    select,
    summarize,
    task_label,
    task_sort_key,
    validate_tidy,
    with_run_settings,
    write_summary,
    write_tidy,
)

SEEDS = (0, 1, 2)
TEMPLATES = ("A portrait of {}", "A sketch of {}")
# Mean over the 2 concepts x 2 templates of 0.1*concept + 0.01*template: added to every level.
OFFSET = 0.05 + 0.005

# (task, domain, erase, ftset, ftmethod, state, step, is_final) -> level of the task's accuracy metric
LEVELS: dict[tuple, float] = {
    ("identity_10", "identity", "none", "none", "none", "base", 0, False): 0.9,
    ("identity_10", "identity", "default", "none", "none", "erased", 0, False): 0.1,
    ("identity_10", "identity", "lambda1_0.001", "none", "none", "erased", 0, False): 0.2,
    ("identity_10", "identity", "default", "random_identity", "lora", "finetuned", 50, False): 0.3,
    ("identity_10", "identity", "default", "random_identity", "lora", "finetuned", 100, True): 0.6,
    ("identity_10", "identity", "default", "random_object", "lora", "finetuned", 100, True): 0.15,
    ("identity_10", "identity", "lambda1_0.001", "random_identity", "lora", "finetuned", 100, True): 0.7,
    ("object_ship", "object", "none", "none", "none", "base", 0, False): 0.3,
    ("object_ship", "object", "default", "none", "none", "erased", 0, False): 0.295,
    ("object_ship", "object", "default", "random_object", "full", "finetuned", 100, True): 0.4,
}


def make_tidy() -> pd.DataFrame:
    """Synthetic evaluation rows: value = level + 0.1*concept + 0.01*template + 0.001*seed."""
    rows = []
    for (task, domain, erase, ftset, ftmethod, state, step, final), level in LEVELS.items():
        common = dict(
            task=task, domain=domain, erase=erase, ftset=ftset, ftmethod=ftmethod,
            state=state, step=step, is_final=final,
        )  # fmt: skip
        acc = ACCURACY_METRIC[domain]
        for seed in SEEDS:
            for ci in range(2):
                for ti, template in enumerate(TEMPLATES):
                    concept = f"{task}_c{ci}"
                    base = dict(
                        common, concept=concept, prompt=template.format(concept), template=template, seed=seed
                    )
                    v = level + 0.1 * ci + 0.01 * ti + 0.001 * seed
                    rows.append(dict(base, role="erased", metric=acc, value=v))
                    # Distractors resurgence_rate must ignore: another metric, and retained concepts.
                    rows.append(dict(base, role="erased", metric="clip_score", value=30.0 + v))
                    rows.append(dict(base, role="retained", metric=acc, value=0.8))
            rows.append(
                dict(
                    common,
                    concept="",
                    role="caption",
                    prompt="",
                    template="",
                    seed=seed,
                    metric="fid",
                    value=10.0 + seed,
                )
            )
    return pd.DataFrame(rows)[list(TIDY_COLUMNS)]


@pytest.fixture(scope="module")
def tidy() -> pd.DataFrame:
    return make_tidy()


@pytest.fixture(scope="module")
def summary(tidy: pd.DataFrame) -> pd.DataFrame:
    return summarize(tidy)


def test_summarize_means_per_seed_match_hand_computation(summary: pd.DataFrame) -> None:
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    ft = summary[
        (summary.task == "identity_10") & (summary.state == "finetuned") & (summary.ftset == "random_identity")
        & (summary.erase == "default") & summary.is_final & (summary.role == "erased")
        & (summary.metric == "identity_acc")
    ]  # fmt: skip
    assert sorted(ft.seed) == list(SEEDS)
    for seed, value, n in zip(ft.seed, ft.value, ft.n, strict=True):
        # concepts 0/1 and templates 0/1: mean(0.6+{0, .01, .1, .11}) + 0.001*seed
        assert value == pytest.approx(0.6 + (0 + 0.01 + 0.1 + 0.11) / 4 + 0.001 * seed)
        assert n == 4
    fid = summary[(summary.metric == "fid") & (summary.state == "base") & (summary.task == "object_ship")]
    assert fid.value.tolist() == [10.0, 11.0, 12.0]
    assert (fid.role == "caption").all()


def test_summarize_is_sorted_and_order_independent(tidy: pd.DataFrame, summary: pd.DataFrame) -> None:
    shuffled = summarize(tidy.sample(frac=1.0, random_state=3))
    pd.testing.assert_frame_equal(shuffled, summary)
    # Rows per (model state x role x metric x seed): 10 states x 3 seeds x (2 erased metrics + retained + fid).
    assert len(summary) == len(LEVELS) * len(SEEDS) * 4


def test_resurgence_rate_matches_hand_computed_values(summary: pd.DataFrame) -> None:
    rr = resurgence_rate(summary)
    assert len(rr) == 4 * len(SEEDS)  # four final fine-tuned runs; the step-50 checkpoint is ignored
    assert set(rr.metric) == {"identity_acc", "clip_acc"}

    def run(erase: str, ftset: str, task: str = "identity_10") -> pd.DataFrame:
        return rr[(rr.task == task) & (rr.erase == erase) & (rr.ftset == ftset)].sort_values("seed")

    main = run("default", "random_identity")
    assert main.seed.tolist() == list(SEEDS)
    assert main.step.tolist() == [100] * 3
    np.testing.assert_allclose(main.base, [0.9 + OFFSET + 0.001 * s for s in SEEDS])
    np.testing.assert_allclose(main.erased, [0.1 + OFFSET + 0.001 * s for s in SEEDS])
    np.testing.assert_allclose(main.finetuned, [0.6 + OFFSET + 0.001 * s for s in SEEDS])
    np.testing.assert_allclose(main.resurgence, 0.5)
    np.testing.assert_allclose(main.recovery, 0.5 / 0.8)

    # The erased state is matched on the erase variant, the base on the task only.
    lam = run("lambda1_0.001", "random_identity")
    np.testing.assert_allclose(lam.resurgence, 0.7 - 0.2)
    np.testing.assert_allclose(lam.recovery, 0.5 / 0.7)

    # Each fine-tune set is its own run, sharing the erased and base states.
    ood = run("default", "random_object")
    np.testing.assert_allclose(ood.resurgence, 0.05)

    # NaN guard: base - erased = 0.005 <= 0.01, so recovery is undefined; resurgence is not.
    ship = run("default", "random_object", task="object_ship")
    assert ship.ftmethod.tolist() == ["full"] * 3
    np.testing.assert_allclose(ship.resurgence, 0.4 - 0.295)
    assert ship.recovery.isna().all()


def test_resurgence_rate_uses_the_last_checkpoint_when_several_are_flagged_final(tidy: pd.DataFrame) -> None:
    all_final = tidy.assign(is_final=np.where(tidy.state == "finetuned", True, tidy.is_final))
    rr = resurgence_rate(all_final)
    main = rr[(rr.task == "identity_10") & (rr.erase == "default") & (rr.ftset == "random_identity")]
    assert main.step.tolist() == [100] * 3
    np.testing.assert_allclose(main.resurgence, 0.5)  # the step-50 checkpoint (0.3) is not mixed in


def test_resurgence_rate_accepts_tidy_rows_and_leaves_missing_states_nan(tidy: pd.DataFrame) -> None:
    no_base = tidy[tidy.state != "base"]
    rr = resurgence_rate(no_base)
    assert rr.base.isna().all()
    assert rr.recovery.isna().all()
    assert rr.resurgence.notna().all()


def test_resurgence_of_each_presence_measure_and_only_the_domains_own(tidy: pd.DataFrame) -> None:
    """A rank that falls from 40 to 10 came back by -30 ranks, 30/39 of what erasure took; a CLIP measure
    of objects in an identity task is not an identity measure and is left out."""
    run = (tidy.task == "identity_10") & (tidy.erase.isin(["default", "none"])) & (tidy.role == "erased")
    run &= tidy.ftset.isin(["random_identity", "none"]) & (tidy.metric == "identity_acc") & (tidy.step != 50)
    rank = tidy[run].assign(metric="identity_rank")
    rank["value"] = rank.state.map({"base": 1.0, "erased": 40.0, "finetuned": 10.0})
    stray = tidy[run].assign(metric="clip_prob")
    rr = resurgence_rate(pd.concat([tidy, rank, stray], ignore_index=True))
    ranks = rr[rr.metric == "identity_rank"]
    assert len(ranks) == len(SEEDS) and set(ranks.ftset) == {"random_identity"}
    np.testing.assert_allclose(ranks.resurgence, -30.0)
    np.testing.assert_allclose(ranks.recovery, 30.0 / 39.0)
    assert set(rr.metric) == {"identity_acc", "identity_rank", "clip_acc"}


def test_select_picks_exactly_the_experiment_runs(tidy: pd.DataFrame, summary: pd.DataFrame) -> None:
    exp = Experiment(
        name="resurgence_identity",
        figure="fig5",
        runs=[{"task": "identity_10", "erase": "default", "ftset": "random_identity", "ftmethod": "lora"}],
    )
    for df in (tidy, summary):
        picked = select(df, exp)
        kinds = set(
            picked[["state", "erase", "ftset", "ftmethod", "step"]].itertuples(index=False, name=None)
        )
        assert kinds == {
            ("base", "none", "none", "none", 0),
            ("erased", "default", "none", "none", 0),
            ("finetuned", "default", "random_identity", "lora", 50),
            ("finetuned", "default", "random_identity", "lora", 100),
        }
        assert (picked.task == "identity_10").all()
        expected = df[
            (df.task == "identity_10")
            & (
                (df.state == "base")
                | ((df.state == "erased") & (df.erase == "default"))
                | ((df.state == "finetuned") & (df.erase == "default") & (df.ftset == "random_identity"))
            )
        ]
        assert len(picked) == len(expected)

    two = Experiment("ftmethod", "fig8", runs=[
        {"task": "object_ship", "erase": "default", "ftset": "random_object", "ftmethod": "full"},
        {"task": "identity_10", "erase": "lambda1_0.001", "ftset": "random_identity", "ftmethod": "lora"},
    ])  # fmt: skip
    picked = select(summary, two)
    assert set(zip(picked.task, picked.state, picked.erase, strict=True)) == {
        ("object_ship", "base", "none"),
        ("object_ship", "erased", "default"),
        ("object_ship", "finetuned", "default"),
        ("identity_10", "base", "none"),
        ("identity_10", "erased", "lambda1_0.001"),
        ("identity_10", "finetuned", "lambda1_0.001"),
    }
    assert select(summary, Experiment("empty", "fig5", runs=[])).empty


def test_experiment_validates_run_keys() -> None:
    with pytest.raises(ValueError, match="ftmethod"):
        Experiment(
            "bad", "fig5", runs=[{"task": "identity_10", "erase": "default", "ftset": "random_identity"}]
        )
    exp = Experiment.from_dict({"name": "x", "figure": "fig9", "runs": [
        {"task": "object_ship", "erase": "default", "ftset": "tercile_1", "ftmethod": "lora"}]})  # fmt: skip
    assert exp.runs[0]["ftset"] == "tercile_1"


def test_csv_round_trip_and_deterministic_writes(tidy: pd.DataFrame, summary: pd.DataFrame, tmp_path) -> None:
    write_tidy(tidy.sample(frac=1.0, random_state=1), tmp_path / "a.csv")
    write_tidy(tidy, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    back = read_tidy([tmp_path / "a.csv"])
    assert back.is_final.dtype == bool and back.step.dtype == np.int64 and back.seed.dtype == np.int64
    assert (back[back.metric == "fid"].concept == "").all()  # empty stays "", not NaN
    pd.testing.assert_frame_equal(summarize(back), summary, check_exact=False)

    write_summary(summary.sample(frac=1.0, random_state=2), tmp_path / "s1.csv")
    write_summary(summary.iloc[::-1], tmp_path / "s2.csv")
    assert (tmp_path / "s1.csv").read_bytes() == (tmp_path / "s2.csv").read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    pd.testing.assert_frame_equal(read_summary(tmp_path / "s1.csv"), summary, check_exact=False)

    # Resurgence tables go through the same writer, sorted by their run keys.
    rr = resurgence_rate(summary)
    write_summary(rr.iloc[::-1], tmp_path / "r.csv")
    back_rr = pd.read_csv(tmp_path / "r.csv")
    assert list(back_rr.columns) == list(rr.columns)
    assert list(zip(back_rr.task, back_rr.erase, back_rr.ftset, back_rr.seed, strict=True)) == list(
        zip(rr.task, rr.erase, rr.ftset, rr.seed, strict=True)
    )

    # Two evaluation jobs' CSVs concatenate.
    both = read_tidy([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert len(both) == 2 * len(tidy)


def test_validation_names_missing_columns_and_bad_values(tidy: pd.DataFrame, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"missing columns: \['seed', 'metric'\]"):
        validate_tidy(tidy.drop(columns=["seed", "metric"]))
    tidy.drop(columns=["value"]).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(ValueError, match="value"):
        read_tidy(tmp_path / "x.csv")
    with pytest.raises(ValueError, match="state"):
        validate_tidy(tidy.assign(state="half-erased"))
    with pytest.raises(ValueError, match="is_final"):
        validate_tidy(tidy.assign(is_final="maybe"))
    with pytest.raises(ValueError, match="seed"):
        validate_tidy(tidy.assign(seed=0.5))
    with pytest.raises(ValueError, match="no CSV"):
        read_tidy([])


def test_task_naming_orders_like_the_paper() -> None:
    tasks = [
        "object_5",
        "identity_100",
        "object_bird",
        "identity_5",
        "object_ship",
        "identity_1",
        "object_automobile",
    ]
    assert sorted(tasks, key=task_sort_key) == [
        "identity_1", "identity_5", "identity_100", "object_ship", "object_automobile", "object_bird", "object_5",
    ]  # fmt: skip
    assert task_label("identity_10") == "Erase 10 identities"
    assert task_label("identity_1") == "Erase 1 identity"
    assert task_label("object_5") == "Erase 5 objects"
    assert task_label("object_ship") == "Erase ship"
    assert math.isfinite(task_sort_key("weird")[0])


RUNS = [
    dict(task="identity_10", erase="default", ftset="random_identity", ftmethod="lora", method="mace",
         mapping="a person", lambda1=1e-4, is_default_erase=True, ftset_kind="random", ftset_domain="identity",
         tercile=None, is_default_ftset=True, is_default_ftmethod=True),
    dict(task="identity_10", erase="default", ftset="random_object", ftmethod="lora", method="mace",
         mapping="a person", lambda1=1e-4, is_default_erase=True, ftset_kind="random", ftset_domain="object",
         tercile=None, is_default_ftset=False, is_default_ftmethod=True),
    dict(task="identity_10", erase="lambda1_0.001", ftset="random_identity", ftmethod="lora", method="mace",
         mapping="a person", lambda1=1e-3, is_default_erase=False, ftset_kind="random", ftset_domain="identity",
         tercile=None, is_default_ftset=True, is_default_ftmethod=True),
]  # fmt: skip


def test_run_settings_go_to_the_rows_they_describe(tidy: pd.DataFrame, tmp_path) -> None:
    """Fine-tuned rows get their run's settings, erased rows their erasure's, base rows none; the summary
    keeps them, and they survive the CSV round trip in their types."""
    exp = Experiment(name="x", figure="x", runs=RUNS)
    rows = with_run_settings(select(tidy, exp), RUNS)
    assert len(rows) == len(select(tidy, exp))
    ft = rows[(rows.state == "finetuned") & (rows.ftset == "random_object")]
    assert set(ft.ftset_domain) == {"object"} and not ft.is_default_ftset.any() and ft.is_default_erase.all()
    lam = rows[(rows.state == "erased") & (rows.erase == "lambda1_0.001")]
    assert set(lam.lambda1) == {1e-3} and set(lam.ftset_kind) == {""} and not lam.is_default_erase.any()
    base = rows[rows.state == "base"]
    assert set(base.method) == {""} and base.lambda1.isna().all() and not base.is_default_erase.any()
    summary = summarize(rows)
    assert len(summary) == len(summarize(select(tidy, exp)))  # the settings do not split any group
    write_summary(summary, tmp_path / "s.csv")
    back = read_summary(tmp_path / "s.csv")
    pd.testing.assert_frame_equal(back, summary, check_dtype=True)
