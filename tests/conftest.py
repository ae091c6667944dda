import os

import pytest
import slurm_cluster
import torch
import yaml
from snakemake_helpers import ROOT, snakemake, study_dir

from resurgence.models.pipeline import build_random_pipeline

SLURM_PROFILE = ROOT / "workflow" / "profiles" / "slurm"
# What the test cluster needs on top of the users' profile: it has no accounting database (so job
# states come from squeue, not sacct) and its jobs take seconds, not hours (poll from 2 s on).
SLURM_TEST_OVERLAY = {"slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 2}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A one-node Slurm cluster on localhost for the whole session (`tests/slurm_cluster.py`), or None
    where none can be started (the reason is printed)."""
    reason = slurm_cluster.unavailable()
    if reason and os.environ.get("RESURGENCE_REQUIRE_SLURM"):
        pytest.fail(
            f"RESURGENCE_REQUIRE_SLURM is set (.ci/run installed Slurm) but no test cluster: {reason}"
        )
    if reason:
        print(f"\nno test Slurm cluster: {reason}")
        yield None
        return
    cluster = slurm_cluster.SlurmCluster(tmp_path_factory.mktemp("slurm"), gpus=2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def slurm_profile(folder) -> str:
    """`workflow/profiles/slurm` with `SLURM_TEST_OVERLAY`, as a profile folder of its own."""
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({**profile, **SLURM_TEST_OVERLAY}))
    return str(folder)


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory, slurm):
    """The smoke study, run once to the end: submitted through `workflow/profiles/slurm` where a test
    cluster runs (`slurm`), else `snakemake --cores 2 --configfile config.smoke.yaml`."""
    work = study_dir(tmp_path_factory.mktemp("smoke"))
    if slurm is None:
        snakemake("--cores", "2", "--configfile", "config.smoke.yaml", "--resources", "gpu=1", cwd=work)
    else:
        profile = slurm_profile(tmp_path_factory.mktemp("slurm_profile"))
        snakemake(
            "--profile", profile, "--configfile", "config.smoke.yaml", cwd=work, SLURM_CONF=str(slurm.conf)
        )
    return work


@pytest.fixture(scope="module")
def tokdir(tmp_path_factory):
    """A folder for the tiny pipelines' tokenizer, one per test module."""
    return tmp_path_factory.mktemp("tok")


@pytest.fixture
def pipe(tokdir):
    """A fresh tiny random-weight SD pipeline (`build_random_pipeline("tiny")`) for each test."""
    p = build_random_pipeline("tiny", seed=0, tokenizer_dir=tokdir)
    p.set_progress_bar_config(disable=True)
    return p
