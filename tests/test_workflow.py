"""The workflow as users run it: lint, formatting, the default DAG, config rejection, and an
end-to-end run of the smoke preset with its incremental-rerun behaviour."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from snakemake_helpers import ROOT, job_blocks, job_counts, job_field, rule_values, run, snakemake, study_dir

STAGES = {
    "toyworld_quality",
    "erase",
    "ftdata_random",
    "ftdata_tercile",
    "finetune",
    "generate_base_pool",
    "generate_base",
    "generate_erased",
    "generate_finetuned",
    "evaluate",
    "tables",
    "figure",
    "trajectory_figure",
    "grids_figure",
    "reversion",
    "reversion_summary",
}


def test_ruff_clean():
    run([sys.executable, "-m", "ruff", "check", "resurgence", "tests", "benchmarks"])


def test_ruff_format_clean():
    run([sys.executable, "-m", "ruff", "format", "--check", "resurgence", "tests", "benchmarks", "tools"])


def test_snakefmt_clean():
    run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/rules"])


def test_snakemake_lint_clean():
    out = snakemake("--lint", "--config", "toyworld={retrain: true}")
    assert "Congratulations" in out.stdout + out.stderr


def test_default_study_dry_run_lists_every_stage():
    # retrain=true: the DAG also holds the toy-model training, and needs no shipped weights.
    out = snakemake("-n", "--forceall", "--rerun-incomplete", "--config", "toyworld={retrain: true}")
    counts = job_counts(out.stdout)
    assert set(counts) >= STAGES | {"toyworld_train"}, f"missing stages: {STAGES - set(counts)}"
    assert counts["figure"] == 10  # Figs. 5-13 and the methods figure
    # 23 MACE erasures, 8 UCE (Fig. 5's tasks) and 4 ESD (two variants x identity_10, object_ship)
    assert counts["erase"] == 35 and counts["finetune"] == 45 and counts["reversion"] == 45


@pytest.mark.parametrize(("devices", "gpu_job_threads"), [("1", {1}), ("0", {4})])
def test_default_profile_runs_gpu_jobs_at_one_thread_only_where_there_is_a_gpu(
    tmp_path, devices, gpu_job_threads
):
    """The README's command on a 16-core machine: with a GPU, its jobs share it at one thread each (16 at once,
    `gpu_jobs_per_device`; the fastest measured setting, docs/study_speed.md); without one, each takes 4 cores."""
    out = snakemake(
        "-n",
        "--profile",
        "workflow/profiles/default",
        "--cores",
        "16",
        cwd=study_dir(tmp_path / "study"),
        RESURGENCE_GPU_DEVICES=devices,
    ).stdout
    threads = rule_values(out, "threads", 1)
    assert threads["erase"] == threads["generate_erased"] == threads["evaluate"] == gpu_job_threads
    assert threads["finetune"] == threads["reversion"] == gpu_job_threads


def test_building_the_dag_imports_no_torch():
    """Snakemake parses the Snakefile again in every cluster job (and every dry run): the study's specs,
    configs and manifest reads stay torch-free, so that parse takes ~2 s, not ~5 s (2 cores)."""
    out = run([sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--quiet", "--forceall"])
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")
    }
    assert "resurgence.study" in imported and "resurgence.mace.config" in imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}


def test_missing_toy_weights_stop_before_any_job(tmp_path):
    out = snakemake("-n", "--config", f"toyworld={{weights: {tmp_path}}}", check=False)
    assert out.returncode != 0
    assert "config key 'toyworld.weights'" in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("world=mars", "'world'"),
        ("device=tpu", "'device'"),
        ("seeds=[]", "'seeds'"),
        ("trajectory={experiment: fig5, steps: [60]}", "'trajectory.steps'"),
    ],
)
def test_malformed_config_stops_before_any_job(override, fragment):
    out = snakemake("-n", "--config", override, "toyworld={retrain: true}", check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert f"config key {fragment}" in text, text[-2000:]
    assert "allowed values" in text or "non-empty" in text, text[-2000:]
    assert "Job stats" not in text


def test_unreadable_study_config_is_named_before_any_job(tmp_path):
    work = study_dir(tmp_path / "study")
    (work / "config.yaml").unlink()
    (work / "config.yaml").write_text("world: toy\ntasks: [identity_1\n")
    out = snakemake("-n", cwd=work, check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "config file 'config.yaml' is not valid YAML at line 3" in text, text[
        -2000:
    ]
    assert "Job stats" not in text


# ----------------------------------------------------------------------------- end to end (smoke)


@pytest.mark.slow
def test_smoke_study_produces_tables_and_figures(smoke_dir):
    import pandas as pd

    for fig in ("fig5", "fig11", "fig12", "fig13", "methods", "trajectory", "grids", "reversion"):
        png = smoke_dir / "results" / "figures" / f"{fig}.png"
        assert png.stat().st_size > 10_000, fig
    summary = pd.read_csv(smoke_dir / "results" / "tables" / "fig5" / "summary.csv")
    assert {"base", "erased", "finetuned"} <= set(summary["state"])
    assert {"identity_acc", "clip_acc"} <= set(summary["metric"])
    rates = pd.read_csv(smoke_dir / "results" / "tables" / "fig5" / "resurgence.csv")
    assert set(rates["task"]) == {"identity_1", "object_ship"}
    assert rates["resurgence"].notna().all()
    # Every presence measure of each domain, top-1 and continuous.
    assert set(rates["metric"]) == {
        "identity_acc", "identity_prob", "identity_rank", "identity_acc_clip", "identity_prob_clip",
        "identity_rank_clip", "clip_acc", "clip_prob", "clip_rank",
    }  # fmt: skip
    reversion = pd.read_csv(smoke_dir / "results" / "tables" / "reversion" / "reversion.csv")
    assert set(reversion["task"]) == {"identity_1", "object_ship"} and set(reversion["step"]) == {2, 4}
    final = reversion[reversion["is_final"]]
    assert (
        final[["erase_rel_norm", "finetune_rel_norm", "reversion_cosine", "resurgence"]].notna().all().all()
    )
    erasure = smoke_dir / "results" / "erase" / "identity_1" / "default" / "erased_lora.safetensors"
    assert erasure.stat().st_size > 0
    # the methods experiment: every method erased, was fine-tuned and scored like MACE
    methods = pd.read_csv(smoke_dir / "results" / "tables" / "methods" / "resurgence.csv")
    assert set(zip(methods["task"], methods["erase"], strict=True)) == {
        ("identity_1", "default"), ("identity_1", "uce"), ("object_ship", "uce"),
        ("identity_1", "esd_x"), ("object_ship", "esd_u"),
    }  # fmt: skip
    assert (smoke_dir / "results" / "erase" / "object_ship" / "esd_u" / "erased_dense.safetensors").is_file()
    assert not (smoke_dir / "results" / "erase" / "object_ship" / "esd_u" / "checkpoints").exists()
    esd_u = final[(final["task"] == "object_ship") & (final["erase"] == "esd_u")]
    assert len(esd_u) == 1 and esd_u["erase_rel_norm"].iloc[0] > 0  # measured over the layers ESD-u changed
    assert not list((smoke_dir / "results").rglob("*.tmp")), "half-written artifacts left behind"
    # the smoke preset's quality gates prompt its first 4 identities and objects (toyworld.quality_concepts)
    from resurgence.toyworld.concepts import toy_world

    world = toy_world(0)
    quality = json.loads((smoke_dir / "results" / "toyworld" / "quality.json").read_text())
    assert quality["t2i_concepts"] == 4
    assert quality["t2i_identity_images"] == sum(len(world.eval_prompts(c)) for c in world.identities[:4])
    assert quality["t2i_object_images"] == sum(len(world.eval_prompts(c)) for c in world.objects[:4])
    # its log's phase line counts the gates' scoring and the detector's loading, not as "other"
    from resurgence import layout, phases

    split = phases.parse_phases((smoke_dir / layout.log_file("toyworld", "quality")).read_text().splitlines())
    assert split is not None and split[phases.SCORE] > 0 and split[phases.LOAD] > 0


def test_jobs_start_by_stage_heads_of_the_longest_chains_first(tmp_path):
    """Where slots are scarce, ready jobs start erasures first, then fine-tune sets and base pools, then erased
    generations and fine-tunes, then fine-tuned generations, then evaluation and the rest (Snakemake's job
    priority, as its dry run states it for every job); among the erasures, the one of more concepts first."""
    from resurgence.scheduler import STAGE_STEP

    study = study_dir(tmp_path / "study")
    (study / "two.yaml").write_text(
        'tasks:\n  identity_1: {domain: identity, erase: ["Selrie Wylwick", "Zesen Delrane"],'
        ' retain: ["Bridor Dunbury", "Rurie Tammoor"]}\n'
    )
    out = snakemake("-n", "--configfile", "config.smoke.yaml", "two.yaml", cwd=study).stdout
    priority = rule_values(out, "priority", 0)
    stage = {rule: {p // STAGE_STEP for p in v} for rule, v in priority.items()}
    assert all(len(v) == 1 for v in stage.values()), priority
    rank = {rule: v.pop() for rule, v in stage.items()}
    order = [
        {"erase", "toyworld_quality"},
        {"ftdata_random", "generate_base_pool"},
        {"generate_erased", "finetune"},
        {"generate_finetuned"},
        {"evaluate", "reversion", "generate_base", "tables", "figure"},
    ]
    assert set().union(*order) <= set(rank), sorted(rank)
    for first, then in zip(order, order[1:], strict=False):
        assert min(rank[r] for r in first) > max(rank[r] for r in then), (first, then, rank)
    # each erasure's priority, by its task: the two-concept task's erasures outrank the one-concept task's
    erase: dict[str, set[int]] = {}
    for rule, block in job_blocks(out):
        if rule == "erase":
            task = re.match(r"task=(\w+)", job_field(block, "wildcards"))[1]
            erase.setdefault(task, set()).add(int(job_field(block, "priority")))
    assert {"identity_1", "object_ship"} <= set(erase), erase
    assert min(erase["identity_1"]) > max(erase["object_ship"]), erase


@pytest.mark.slow
def test_second_run_does_nothing(smoke_dir):
    out = snakemake("-n", "--configfile", "config.smoke.yaml", cwd=smoke_dir)
    assert "Nothing to be done" in out.stdout + out.stderr


@pytest.mark.slow
def test_gpu_sharing_mps_starts_the_runs_own_daemon_and_stops_it(smoke_dir, tmp_path):
    """With `gpu_sharing: mps` on a machine with a GPU (one counted through RESURGENCE_GPU_DEVICES), a local run
    starts an MPS control daemon of its own before its jobs, names it to them, and quits it at the end (a
    stand-in control program records its calls; the job run is one figure, forced)."""
    from test_mps import calls, fake_control

    from resurgence import layout

    record = tmp_path / "calls.jsonl"
    bin_dir = fake_control(tmp_path / "bin", record)
    figure = layout.figure("fig5")
    out = snakemake(
        "--cores", "1", "--configfile", "config.smoke.yaml", "--config", "gpu_sharing=mps",
        "--forcerun", "figure", "--", figure,
        cwd=smoke_dir, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", RESURGENCE_GPU_DEVICES="1",
    )  # fmt: skip
    assert "through an MPS daemon of this run" in out.stderr
    start, stop = calls(record)
    assert start["argv"] == ["-d"] and start["log"] == str((smoke_dir / layout.log_dir("mps")).resolve())
    assert stop["stdin"] == "quit\n" and stop["pipe"] == start["pipe"] and not Path(start["pipe"]).exists()
    assert (smoke_dir / figure).is_file()


@pytest.mark.slow
def test_changing_a_learning_rate_reruns_exactly_downstream(smoke_dir):
    overlay = smoke_dir / "lr.yaml"
    overlay.write_text("finetune_methods:\n  lora: {learning_rate: 3.0e-4}\n")
    out = snakemake("-n", "--configfile", "config.smoke.yaml", "lr.yaml", cwd=smoke_dir)
    counts = job_counts(out.stdout)
    # 6 LoRA runs (identity_1 and object_ship erased by MACE, UCE and one ESD variant each): each
    # fine-tune and its final generation, the two MACE runs' trajectory generations too, their
    # evaluations; then every table and figure that reads them. Nothing upstream.
    assert counts.get("finetune") == 6
    assert counts.get("generate_finetuned") == 8
    assert counts.get("evaluate") == 8
    assert not {
        "erase",
        "ftdata_random",
        "generate_base_pool",
        "generate_base",
        "generate_erased",
        "toyworld_quality",
    } & set(counts), counts
    shutil.rmtree(smoke_dir / ".snakemake" / "locks", ignore_errors=True)


@pytest.mark.slow
def test_html_report_holds_figures_and_tables(smoke_dir):
    snakemake("--configfile", "config.smoke.yaml", "--report", "report.html", cwd=smoke_dir)
    html = (smoke_dir / "report.html").read_text(errors="replace")
    for name in ("fig5.png", "grids.png", "summary.csv", "resurgence.csv"):
        assert name in html, name


def test_new_shipped_weights_rerun_exactly_the_jobs_that_read_them(tmp_path):
    """A job's recorded params hold the digests of the shipped models it reads: a new CLIP reruns the
    CLIP-distance fine-tune set but not the erasure; a new text-to-image model reruns both."""
    import json

    work = study_dir(tmp_path / "study")
    (work / "resources").unlink()  # its own manifest beside the shipped model folders
    world = work / "resources" / "toyworld"
    world.mkdir(parents=True)
    for model in ("t2i", "clip", "detector", "segmenter"):
        (world / model).symlink_to(ROOT / "resources" / "toyworld" / model)
    shutil.copy(ROOT / "resources" / "toyworld" / "manifest.json", world / "manifest.json")
    erase = [
        "results/erase/object_ship/default/erased_lora.safetensors",
        "results/erase/object_ship/default/report.json",
    ]
    tercile = ["results/ftdata/tercile/identity_10/tercile_1/manifest.json"]
    snakemake("--cores", "1", "--touch", *erase, *tercile, cwd=work)  # records each job's params, runs none
    for target in erase + tercile:
        (work / target).parent.mkdir(parents=True, exist_ok=True)
        (work / target).write_text("")

    def reruns() -> dict[str, int]:
        counts = job_counts(snakemake("-n", *erase, *tercile, cwd=work).stdout)
        return {rule: n for rule, n in counts.items() if rule != "total"}

    assert reruns() == {}

    def new_file(prefix: str) -> None:
        manifest = json.loads((world / "manifest.json").read_text())
        path = next(p for p in sorted(manifest["files"]) if p.startswith(prefix))
        manifest["files"][path] = "0" * 64
        (world / "manifest.json").write_text(json.dumps(manifest))

    new_file("clip/")
    assert reruns() == {"ftdata_tercile": 1}
    new_file("t2i/")
    assert reruns() == {"ftdata_tercile": 1, "erase": 1}
