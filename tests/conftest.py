import pytest
import torch
from snakemake_helpers import snakemake, study_dir


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
