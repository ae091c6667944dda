# Concept resurgence study: erase (MACE) -> fine-tune on unrelated concepts -> measure what returns.
# Rules are thin: each calls `python -m resurgence <stage>`; the logic lives in the package.
import os
import sys

from snakemake.utils import min_version

from resurgence.config import prepare_config, read_config_file
from resurgence import forkserver, gpus, jobs, layout, mps, progress, scheduler, study

min_version("9.0")

# Snakemake's scheduler keeps one re-evaluation timer pending, not one more per job event (resurgence.scheduler).
if workflow.is_main_process:
    from snakemake.scheduling.job_scheduler import JobScheduler

    scheduler.coalesce_reevaluations(JobScheduler)

# Jobs stop when this Snakemake process ends, however it ends; locks of a killed earlier run are released.
jobs.adopt_jobs()
if workflow.is_main_process:
    for pid in jobs.release_stale_locks():
        print(
            f"resurgence: removed the Snakemake locks of run {pid}, which ended without releasing them",
            file=sys.stderr,
        )

# A study config that cannot be read stops the run naming the file (Snakemake's own message does not).
read_config_file("config.yaml")


configfile: "config.yaml"


# A bad config stops the run here, before any job, naming the key and the allowed values; the schema's
# defaults are filled in once, here.
prepare_config(config)
study.check_study(config)


# GPU jobs that share a GPU run through an MPS daemon of this run (`gpu_sharing`, resurgence.mps), named to the
# fork server and the jobs before they start.
_mps = []


# Local jobs fork from one interpreter that has imported the libraries (resurgence.forkserver): the
# imports cost ~8 s a job on a 2-core CPU. A job it cannot vouch for starts on its own.
onstart:
    if (
        workflow.is_main_process
        and workflow.local_exec
        and mps.wanted(
            config["gpu_sharing"], _devices, int(os.environ[gpus.SLOTS_ENV])
        )
    ):
        _mps.append(mps.start_mps(layout.log_dir("mps")))
    if workflow.is_main_process and workflow.local_exec and config["fork_server"]:
        forkserver.start_server(layout.log_file("forkserver", "server"))
    # A line a minute: jobs done of all, by rule, what runs now, an estimate of the time left.
    if workflow.is_main_process:
        progress.watch_study(
            workflow.dag, workflow.cores if workflow.local_exec else workflow.nodes
        )


# The end of a successful run: where its figures are and Fig. 5's headline numbers (`study.run_summary`).
onsuccess:
    forkserver.stop_server()
    for daemon in _mps:
        mps.stop_mps(daemon)
    if workflow.is_main_process:
        print(study.run_summary(config), file=sys.stderr)


onerror:
    forkserver.stop_server()
    for daemon in _mps:
        mps.stop_mps(daemon)


# GPU jobs share each GPU `gpu_jobs_per_device` at a time unless --resources gpu=N says how many run at
# once, each with `gpu_job_threads` threads (without GPUs, the cores bound them); jobs inherit the slot and
# device counts and pin themselves to a device each (resurgence.gpus).
os.environ.setdefault(gpus.DEVICES_ENV, str(gpus.count_gpus()))
_devices = int(os.environ[gpus.DEVICES_ENV])
_slots = gpus.default_gpu_slots(_devices, config["gpu_jobs_per_device"])
JOB_THREADS = gpus.job_threads(_devices, config["gpu_job_threads"])
if "gpu" not in workflow.global_resources and _slots:
    workflow.global_resources["gpu"] = _slots
_gpus = workflow.global_resources.get("gpu")
os.environ.setdefault(gpus.SLOTS_ENV, str(getattr(_gpus, "value", _gpus) or 0))


wildcard_constraints:
    task=r"[A-Za-z0-9_]+",
    erase=r"[A-Za-z0-9_.-]+",
    ftset=r"[A-Za-z0-9_]+",
    ftmethod=r"[A-Za-z0-9_]+",
    step=r"\d+",
    experiment=r"fig\d+|control|methods",
    variant=r"[A-Za-z0-9_]+",
    pool=r"[a-z]+(-[A-Za-z0-9_]+)?",
    state=layout.STATE_PATTERN,


include: "workflow/rules/common.smk"
include: "workflow/rules/toyworld.smk"
include: "workflow/rules/erase.smk"
include: "workflow/rules/ftdata.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/reversion.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        study.figure_targets(config),
        toyworld_quality_target(),
