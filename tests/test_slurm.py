"""The smoke study submitted through `workflow/profiles/slurm` to a real (one-node, localhost) Slurm.

`smoke_dir` runs the study through the cluster where `.ci/run` installed Slurm (as root); these tests
read what the submission left: Snakemake's log, the executor's per-job logs and Slurm's own records.
"""

from __future__ import annotations

import re

import pytest
import slurm_cluster
from conftest import slurm_profile
from snakemake_helpers import snakemake

pytestmark = pytest.mark.slurm

_BLOCK = re.compile(r"^(local)?rule (\w+):\n(.*?)(?=^\S)", re.M | re.S)
_SUBMITTED = re.compile(r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.$", re.M)


def jobs_of(log: str) -> dict[int, dict]:
    """Each job of a Snakemake log: rule, local or not, its resources and its Slurm job id if submitted."""
    jobs = {}
    for m in _BLOCK.finditer(log):
        body = m.group(3)
        jobid = re.search(r"^\s+jobid: (\d+)$", body, re.M)
        res = re.search(r"^\s+resources: (.*)$", body, re.M)
        if jobid is None:
            continue
        resources = dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}
        jobs[int(jobid.group(1))] = dict(rule=m.group(2), local=bool(m.group(1)), resources=resources)
    for jobid, slurm_id, slurm_log in _SUBMITTED.findall(log):
        jobs[int(jobid)].update(slurm_id=slurm_id, slurm_log=slurm_log)
    return jobs


def test_the_log_parser_pairs_jobs_with_their_slurm_ids():
    log = (
        "[Thu Dec  3 12:08:00 2026]\nrule a:\n    output: a.txt\n    jobid: 3\n"
        "    resources: mem_mb=8000, runtime=60, gpu=1\nShell command: x\n"
        "Job 3 has been submitted with SLURM jobid 7 (log: /w/.snakemake/slurm_logs/rule_a/7.log).\n"
        "[Thu Dec  3 12:08:34 2026]\nlocalrule all:\n    input: c.txt\n    jobid: 0\n"
        "    resources: tmpdir=/tmp\nShell command: None\n"
    )
    assert jobs_of(log) == {
        3: dict(rule="a", local=False, resources={"mem_mb": "8000", "runtime": "60", "gpu": "1"},
                slurm_id="7", slurm_log="/w/.snakemake/slurm_logs/rule_a/7.log"),
        0: dict(rule="all", local=True, resources={"tmpdir": "/tmp"}),
    }  # fmt: skip


@pytest.fixture(scope="module")
def submitted(smoke_dir, slurm):
    if slurm is None:
        pytest.skip(f"no test Slurm cluster: {slurm_cluster.unavailable()}")
    logs = sorted((smoke_dir / ".snakemake" / "log").glob("*.snakemake.log"))
    return jobs_of(logs[0].read_text())


def test_every_job_of_the_smoke_study_went_through_sbatch(submitted, smoke_dir, slurm):
    remote = [j for j in submitted.values() if not j["local"]]
    assert len(remote) >= 60  # the smoke study's 68 jobs but `all`
    missing = sorted({j["rule"] for j in remote if "slurm_id" not in j})
    assert not missing, f"rules run without sbatch: {missing}"
    completed = dict(re.findall(r"JobId=(\d+) .*?JobState=(\w+)", slurm.job_completions.read_text()))
    for j in remote:
        assert completed.get(j["slurm_id"]) == "COMPLETED", j
        # The executor names the rule in the job's comment (its own logs of successful jobs are removed).
        assert slurm.scontrol_job(j["slurm_id"])["Comment"].startswith(f"rule_{j['rule']}"), j
    assert {j["rule"] for j in submitted.values() if j["local"]} <= {"all"}
    for table in ("fig5", "fig11", "methods"):
        assert (smoke_dir / "results" / "tables" / table / "resurgence.csv").is_file()
    for figure in ("fig5", "methods", "reversion", "trajectory", "grids"):
        assert (smoke_dir / "results" / "figures" / f"{figure}.png").is_file()


def _minutes(limit: str) -> int:
    """Slurm's TimeLimit ([days-]hh:mm:ss) in minutes."""
    days, _, clock = limit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + (s > 0)


def test_each_rules_resources_reach_slurm_as_its_request(submitted, slurm):
    """mem_mb, runtime and gpu of a GPU rule, and a CPU rule's partition, as Slurm holds the jobs."""
    gpu = next(j for j in submitted.values() if j["rule"] == "generate_base_pool")
    job = slurm.scontrol_job(gpu["slurm_id"])
    assert job["MinMemoryNode"] == f"{gpu['resources']['mem_mb']}M"
    assert _minutes(job["TimeLimit"]) == int(gpu["resources"]["runtime"])
    assert job["TresPerJob"] == f"gres:gpu:{gpu['resources']['gpu']}"
    assert job["Partition"] == "gpu" and job["Comment"].startswith("rule_generate_base_pool_wildcards_")
    cpu = slurm.scontrol_job(next(j for j in submitted.values() if j["rule"] == "tables")["slurm_id"])
    assert cpu["Partition"] == "cpu" and "gpu" not in cpu.get("TresPerJob", "")


def test_a_second_submission_does_nothing(submitted, smoke_dir, slurm, tmp_path):
    before = slurm.job_completions.read_text()
    out = snakemake(
        "--profile", slurm_profile(tmp_path / "profile"), "--configfile", "config.smoke.yaml",
        cwd=smoke_dir, SLURM_CONF=str(slurm.conf),
    )  # fmt: skip
    assert "Nothing to be done" in out.stdout + out.stderr
    assert "has been submitted with SLURM jobid" not in out.stdout + out.stderr
    assert slurm.job_completions.read_text() == before


def test_only_the_test_clusters_own_leftover_config_is_replaced(tmp_path):
    own = tmp_path / "own.conf"
    own.write_text(slurm_cluster.slurm_conf(tmp_path, "node", cpus=2, mem_mb=1000, gpus=1))
    real = tmp_path / "real.conf"
    real.write_text("ClusterName=hpc\nSlurmctldHost=head\n")
    assert slurm_cluster.is_leftover(own)
    assert not slurm_cluster.is_leftover(real)
