"""Reruns of a finished smoke study never reuse stale training state, and a killed run recovers.

Each test works on a copy of the finished smoke study (`smoke_dir`), changes what a user changes,
reruns the fine-tune of identity_1 through Snakemake, and compares its final weights bit for bit with
a clean fine-tune (a fresh folder, the same job command) on the same inputs.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from snakemake_helpers import run, snakemake

from resurgence import layout, study
from resurgence.config import load_config
from resurgence.finetune.train import LORA_WEIGHTS
from resurgence.layout import FINAL, TRAIN_LOG, checkpoint_path

pytestmark = pytest.mark.slow

RUN = study.Run(task="identity_1", ftset="random_identity")
FT = Path(study.finetune_dir(RUN))
TARGET = str(FT / TRAIN_LOG)
SMOKE = ("--cores", "2", "--configfile", "config.smoke.yaml")
# Snakemake gives a job min(rule threads, --cores) threads through OMP_NUM_THREADS; the clean run does too.
JOB_THREADS = "2"
LONG_STEPS = 100
LONG = f"finetune_methods:\n  lora: {{steps: {LONG_STEPS}, checkpoint_every: 2}}\n"


@pytest.fixture
def study_copy(smoke_dir, tmp_path) -> Path:
    """The finished smoke study, copied with its Snakemake records (mtimes kept: nothing is stale)."""

    def skip(folder: str, names: list[str]) -> list[str]:  # the toy trainer's leftover checkpoints: unused
        return ["checkpoints"] if folder.endswith("toyworld/models") else []

    work = tmp_path / "study"
    shutil.copytree(smoke_dir, work, symlinks=True, ignore=skip)
    out = snakemake("-n", *SMOKE[2:], cwd=work)
    assert "Nothing to be done" in out.stdout + out.stderr
    return work


def _overlay(work: Path, name: str, text: str) -> str:
    (work / name).write_text(text)
    return name


def _final(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / FINAL / LORA_WEIGHTS))


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def clean_finetune(work: Path, overlays: list[str], out: Path) -> dict[str, torch.Tensor]:
    """The fine-tune job's own command (`rule finetune`) into a fresh folder: a clean run on the same inputs."""
    config = load_config([work / "config.yaml", work / "config.smoke.yaml", *(work / o for o in overlays)])
    run(
        [sys.executable, "-m", "resurgence", "finetune", "--spec", json.dumps(study.finetune_spec(config, RUN.ftmethod)),
         "--models", json.dumps(study.model_specs(config)), "--erasure", layout.erase_dir(RUN.task, RUN.erase),
         "--data", study.ftset_dir(config, RUN.ftset, RUN.task), "--out-dir", str(out), "--device", "auto"],
        cwd=work, OMP_NUM_THREADS=JOB_THREADS,
    )  # fmt: skip
    return _final(out)


def _train_log(work: Path) -> dict:
    return json.loads((work / FT / TRAIN_LOG).read_text())


def _job_log(work: Path) -> str:
    return (work / "logs" / "finetune" / RUN.task / RUN.erase / RUN.ftset / f"{RUN.ftmethod}.log").read_text()


@pytest.mark.parametrize(
    ("overlay", "changed"),
    [
        ("erase_defaults:\n  identity: {lambda1: 0.01}\n", "model"),  # the erased model changed upstream
        ("finetune_methods:\n  lora: {learning_rate: 3.0e-4}\n", "config.learning_rate"),
    ],
    ids=["lambda1", "learning_rate"],
)
def test_rerun_after_a_change_retrains_from_step_0_and_equals_a_clean_run(
    study_copy, tmp_path, overlay, changed
):
    work = study_copy
    before = _final(work / FT)
    name = _overlay(work, "change.yaml", overlay)
    snakemake(*SMOKE, name, "--resources", "gpu=1", "--", TARGET, cwd=work)
    log = _train_log(work)
    assert log["resumed_from"] is None and len(log["losses"]) == log["steps"]
    assert "discarding stale fine-tune checkpoints" in _job_log(work) and f"'{changed}'" in _job_log(work)
    rerun, clean = _final(work / FT), clean_finetune(work, [name], tmp_path / "clean")
    print(
        f"{changed}: rerun vs clean max |dw| = {_max_diff(rerun, clean):.3g}; vs before {_max_diff(rerun, before):.3g}"
    )
    assert _equal(rerun, clean)
    assert not _equal(rerun, before)  # the change reached the fine-tune: the test could tell


def _job_process(work: Path) -> psutil.Process | None:
    """The fine-tune job's Python process of this study (not its shell)."""
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["cwd"] == str(work) and cmd[1:4] == ["-m", "resurgence", "finetune"]:
            return proc
    return None


def _start_long_finetune(work: Path) -> tuple[subprocess.Popen, str]:
    """Snakemake running a long fine-tune, returned once its step-10 checkpoint is written."""
    name = _overlay(work, "long.yaml", LONG)
    smk = subprocess.Popen(
        [sys.executable, "-m", "snakemake", *SMOKE, name, "--resources", "gpu=1", "--", TARGET],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not checkpoint_path(work / FT, 10).is_dir():
        assert smk.poll() is None and time.monotonic() < deadline, "the fine-tune never reached step 10"
        time.sleep(0.05)
    return smk, name


def _survivors(work: Path) -> list[psutil.Process]:
    alive = []
    for proc in psutil.process_iter(["cwd", "status"]):
        if proc.info["cwd"] == str(work) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            alive.append(proc)
    return alive


def test_killed_finetune_job_resumes_and_equals_an_uninterrupted_run(study_copy, tmp_path):
    work = study_copy
    smk, name = _start_long_finetune(work)
    job = _job_process(work)
    assert job is not None
    job.send_signal(signal.SIGKILL)
    assert smk.wait(timeout=120) != 0  # Snakemake reports the failed job
    killed_at = max(int(p.name[5:]) for p in (work / FT / "checkpoints").glob("step-*"))
    snakemake(*SMOKE, name, "--resources", "gpu=1", "--", TARGET, cwd=work)
    log = _train_log(work)
    print(f"job killed after step {killed_at}; resumed from {log['resumed_from']}")
    assert log["resumed_from"] is not None and killed_at < log["steps"]
    assert _equal(_final(work / FT), clean_finetune(work, [name], tmp_path / "clean"))


def test_killed_snakemake_leaves_no_job_behind_and_the_next_run_completes(study_copy, tmp_path):
    work = study_copy
    smk, name = _start_long_finetune(work)
    smk.send_signal(signal.SIGKILL)
    smk.wait()
    killed = time.monotonic()
    while _survivors(work) and time.monotonic() - killed < 30:
        time.sleep(0.2)
    assert not _survivors(work), [p.cmdline() for p in _survivors(work)]
    print(f"the run's last process ended {time.monotonic() - killed:.1f} s after Snakemake was killed")
    assert "has ended; stopping the job" in _job_log(work)
    assert any((work / ".snakemake" / "locks").glob("*.lock"))  # what used to need --unlock
    # The next run as the README runs it (the default profile reruns incomplete jobs).
    out = snakemake("--profile", "workflow/profiles/default", *SMOKE[2:], name, "--", TARGET, cwd=work)
    assert "removed the Snakemake locks of run" in out.stderr
    log = _train_log(work)
    assert log["resumed_from"] is not None and len(log["losses"]) == log["steps"] == LONG_STEPS
    assert _equal(_final(work / FT), clean_finetune(work, [name], tmp_path / "clean"))
    assert not (work / ".snakemake" / "locks").is_dir() or not any((work / ".snakemake" / "locks").iterdir())
