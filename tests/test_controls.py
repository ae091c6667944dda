"""The controls outside `all`: world variants (exact unlearning, the geometry sweep) and their targets."""

from __future__ import annotations

import json

import pytest
import torch
from snakemake_helpers import job_counts, snakemake

from resurgence import layout, study
from resurgence.config import ConfigError, load_config
from resurgence.erasure.artifact import apply_erasure, kv_module_names, no_erasure, save_erasure
from resurgence.models.pipeline import build_random_pipeline


@pytest.fixture
def config():
    return load_config(["config.yaml"])


def test_a_variant_task_starts_from_its_variants_model_and_others_from_the_shipped_one(config):
    assert study.task_models(config, "identity_10")["pipeline"] == study.model_specs(config)["pipeline"]
    models = study.task_models(config, "identity_10_exact")
    assert models["pipeline"] == "results/variants/exact_unlearning/t2i"
    assert models["detector"] == study.model_specs(config)["detector"]  # the same judges


def test_variant_training_changes_one_thing(config):
    exact = study.variant_train_spec(config, "exact_unlearning")
    assert exact["exclude"] == config["tasks"]["identity_10"]["erase"]
    assert exact["knowledge"] == study.toy_knowledge(config)
    flat = study.variant_train_spec(config, "independent")
    assert flat["exclude"] == [] and flat["knowledge"] == {**study.toy_knowledge(config), "shared": 0.0}
    assert study.figure_tasks(config, "fig14")["identity_10_shared_090"]["shared"] == 0.9
    assert (
        study.figure_tasks(config, "fig14")["identity_10"]["shared"] == study.toy_knowledge(config)["shared"]
    )
    exact = study.Run(task="identity_10_exact", ftset="random_identity")
    assert study.run_settings(config, exact)["method"] == "none"  # the control figure's exact arm


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda c: c["tasks"]["identity_10_exact"].update(variant="nope"), "tasks.identity_10_exact.variant"),
        (lambda c: c["world_variants"]["exact_unlearning"].update(exclude_task="nope"), "exclude_task"),
        (
            lambda c: c["world_variants"]["independent"].update(knowledge={"shared": 1.5}),
            "independent.knowledge",
        ),
    ],
)
def test_bad_variants_are_named(config, change, key):
    change(config)
    with pytest.raises(ConfigError, match=key.replace(".", "\\.")):
        study.check_world_variants(config)


def test_the_controls_are_outside_all_and_every_study_experiment_inside(config):
    assert set(study.study_experiments(config)) == set(config["experiments"]) - {"control", "fig14"}
    assert all(study.task_variant(config, r.task) is None for r in study.all_runs(config))
    assert not any("fig14" in t or "control" in t for t in study.figure_targets(config))


def test_no_erasure_is_a_zero_edit_the_stages_after_it_apply(tmp_path):
    pipe = build_random_pipeline("tiny", seed=0, tokenizer_dir=tmp_path / "tok")
    before = {n: pipe.unet.get_submodule(n).weight.detach().clone() for n in kv_module_names(pipe.unet)}
    erasure = no_erasure(pipe.unet, {"concepts": [{"name": "Ann X"}]})
    assert set(erasure.deltas) == set(before) and all(
        float(d.abs().max()) == 0 for d in erasure.deltas.values()
    )
    save_erasure(erasure, tmp_path / "erase")
    assert json.loads((tmp_path / "erase" / "report.json").read_text())["method"] == "none"
    apply_erasure(pipe, tmp_path / "erase")
    for n, w in before.items():
        assert torch.equal(pipe.unet.get_submodule(n).weight.detach(), w), n


def test_the_control_targets_train_their_variants_and_run_their_runs():
    out = snakemake("-n", "-p", "--forceall", "exact_unlearning_control")
    counts = job_counts(out.stdout)
    assert counts["toyworld_variant"] == 1 and counts["erase"] == 2 and counts["finetune"] == 2
    shell = out.stdout
    train = f"--out-dir $(dirname {layout.manifest_file(layout.variant_dir('exact_unlearning'))}) --only t2i"
    assert train in shell
    assert '"Selrie Wylwick"' in shell.split(train, 1)[1].split("\n")[0]
    assert '"method":"none"' in shell  # the control's erase job makes no edit
    # a variant replays the shipped model's UNet step count, not a time budget
    assert f"--unet-steps {study.shipped_unet_steps(load_config(['config.yaml']))} " in shell
    sweep = job_counts(snakemake("-n", "--forceall", "geometry_sweep").stdout)
    assert sweep["toyworld_variant"] == 2 and sweep["erase"] == 6 and sweep["figure"] == 1
    assert "toyworld_variant" not in job_counts(snakemake("-n", "--forceall").stdout)


@pytest.mark.slow
def test_the_control_targets_run_on_the_smoke_study(smoke_dir):
    import pandas as pd

    snakemake(
        "exact_unlearning_control", "geometry_sweep", "--cores", "2", "--configfile", "config.smoke.yaml",
        "--resources", "gpu=1", cwd=smoke_dir,
    )  # fmt: skip
    results = smoke_dir / "results"
    manifest = json.loads((results / "variants" / "exact_unlearning" / "manifest.json").read_text())
    assert manifest["models"]["t2i"]["config"]["exclude"] == ["Selrie Wylwick"]
    flat = json.loads((results / "variants" / "independent" / "manifest.json").read_text())
    assert flat["models"]["t2i"]["config"]["knowledge"]["shared"] == 0.0
    report = json.loads((results / "erase" / "identity_1_exact" / "default" / "report.json").read_text())
    assert report["method"] == "none"
    control = pd.read_csv(results / "tables" / "control" / "resurgence.csv")
    assert set(control["task"]) == {"identity_1", "identity_1_exact"} and control["resurgence"].notna().all()
    sweep = pd.read_csv(results / "tables" / "fig14" / "resurgence.csv")
    assert set(sweep["task"]) == {"object_ship", "object_ship_independent"}
    for fig in ("control", "fig14"):
        assert (results / "figures" / f"{fig}.png").stat().st_size > 10_000, fig
    # the controls left the study itself up to date
    out = snakemake("-n", "--configfile", "config.smoke.yaml", cwd=smoke_dir)
    assert "Nothing to be done" in out.stdout + out.stderr
