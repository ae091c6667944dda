"""The analysis tools that read a finished study (tools/analysis)."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "analysis"))
import schedule_replay  # noqa: E402  (tools/analysis is a script folder)


def _metadata(run: Path, jobs: dict[str, tuple[str, float, float, list[str]]]) -> Path:
    """Snakemake's metadata of a finished run: per output, its rule, job, inputs, start and end."""
    meta = run / ".snakemake" / "metadata"
    meta.mkdir(parents=True)
    for out, (rule, start, end, inputs) in jobs.items():
        record = dict(rule=rule, job_hash=out, input=inputs, starttime=start, endtime=end)
        (meta / base64.b64encode(out.encode()).decode()).write_text(json.dumps(record))
    return run


def test_replay_is_a_list_schedule_of_the_measured_jobs(tmp_path):
    """Two slots. The run started a short job first and its 30 s erasure, head of the longest chain, late:
    by hand, the run's order ends at 55 s, erasures first at 45 s (the stage order), and a table job that
    holds no slot starts as soon as its input exists."""
    run = _metadata(
        tmp_path,
        {
            "short1": ("generate_base_pool", 0.0, 10.0, []),
            "short2": ("generate_base_pool", 0.0, 10.0, []),
            "erased": ("erase", 10.0, 40.0, []),
            "images": ("generate_erased", 40.0, 55.0, ["erased"]),
            "table": ("tables", 55.0, 55.0, ["images"]),
        },
    )
    jobs = schedule_replay.read_jobs(run)
    rules = {j.rule for j in jobs}
    slotted = schedule_replay.gpu_rules() & rules
    assert slotted == rules - {"tables"}  # the workflow's rules: tables take no GPU slot
    by_rule = {j.rule: j for j in jobs}
    assert [jobs[d].rule for d in by_rule["generate_erased"].deps] == ["erase"]
    as_run = schedule_replay.replay(jobs, 2, lambda i: (jobs[i].start, jobs[i].rule), slotted)
    rank = [schedule_replay.priority(j, {}) for j in jobs]  # no erasure here names a task
    by_stage = lambda i: (-rank[i], jobs[i].start)  # noqa: E731
    stages = schedule_replay.replay(jobs, 2, by_stage, slotted)
    assert (as_run, stages) == (55.0, 45.0)
    assert schedule_replay.remaining_chain(jobs)[jobs.index(by_rule["erase"])] == 45.0

    # With memory for one erasure (its rule declares 12 GB, the generations 8, tables 2) the jobs take turns:
    # erasure 0-30, the pools 30-40 and 40-50 (their stage first), the erased generation 50-65, the table.
    mem = schedule_replay.declared_mem_mb()
    assert [mem[r] for r in ("erase", "generate_base_pool", "generate_erased", "tables")] == [
        12000,
        8000,
        8000,
        2000,
    ]
    assert schedule_replay.replay(jobs, 2, by_stage, slotted, mem_mb=12000, mem_of=mem) == 65.0
    assert schedule_replay.replay(jobs, 2, by_stage, slotted, cores=1) == 65.0  # one core: one job at a time


def test_replay_starts_the_larger_erasure_first_as_the_snakefile_does(tmp_path):
    """Two slots. The run started two one-concept erasures (10 s each) before a three-concept one (30 s) that a
    20 s generation waits for: 10 + 30 + 20 = 60 s. By the Snakefile's priorities (stage, then an erasure's
    concept count) the larger starts at once beside one small one: 30 + 20 = 50 s."""
    from resurgence import layout

    small = [layout.erase_report(f"small{i}", "default") for i in (1, 2)]
    large = layout.erase_report("large", "default")
    run = _metadata(
        tmp_path,
        {
            small[0]: ("erase", 0.0, 10.0, []),
            small[1]: ("erase", 0.0, 10.0, []),
            large: ("erase", 10.0, 40.0, []),
            "images": ("generate_erased", 40.0, 60.0, [large]),
        },
    )
    config = {
        "tasks": {"small1": {"erase": ["a"]}, "small2": {"erase": ["b"]}, "large": {"erase": ["a", "b", "c"]}}
    }
    jobs = schedule_replay.read_jobs(run)
    rank = {out: schedule_replay.priority(j, config) for j in jobs for out in j.outputs}
    assert rank[large] > rank[small[0]] == rank[small[1]] > rank["images"]
    slotted = {"erase", "generate_erased"}
    by_priority = lambda i: (-schedule_replay.priority(jobs[i], config), jobs[i].start)  # noqa: E731
    as_run = lambda i: (jobs[i].start,)  # noqa: E731
    assert schedule_replay.replay(jobs, 2, as_run, slotted) == 60.0
    assert schedule_replay.replay(jobs, 2, by_priority, slotted) == 50.0
