import pytest
import torch
from snakemake_helpers import snakemake, study_dir

from resurgence.models.pipeline import build_random_pipeline


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smoke_dir(tmp_path_factory):
    """The smoke study, run once to the end (`snakemake --cores 2 --configfile config.smoke.yaml`)."""
    work = study_dir(tmp_path_factory.mktemp("smoke"))
    snakemake("--cores", "2", "--configfile", "config.smoke.yaml", "--resources", "gpu=1", cwd=work)
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
