"""The study's progress line: counts by rule, what runs, and a time-left estimate from this run's jobs."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import pytest

from resurgence.progress import (
    benchmark_seconds,
    format_duration,
    remaining_seconds,
    study_progress_line,
    watch_study,
)


def test_remaining_seconds_weights_each_rules_jobs_left_by_its_mean_time():
    total = {"generate": 10, "evaluate": 10, "figure": 2}
    done = {"generate": 4, "evaluate": 2}
    mean = {"generate": 30.0, "evaluate": 10.0}
    # generate 6 x 30 + evaluate 8 x 10 + figure 2 x mean(30, 10) = 180 + 80 + 40, over 2 at once
    assert remaining_seconds(done, total, mean, concurrency=2.0) == pytest.approx(150.0)
    assert remaining_seconds(done, total, {}, concurrency=2.0) is None


def test_progress_line_names_counts_running_rules_and_time_left():
    line = study_progress_line(
        {"generate": 4, "evaluate": 10}, {"generate": 10, "evaluate": 10}, {"generate": 2}, 3700.0
    )
    assert "14/20 jobs done" in line
    assert "generate 4/10" in line and "evaluate" not in line.split(";")[0].split("(")[1]
    assert "running: generate x2" in line
    assert "about 1 h 02 min left" in line
    assert "estimating" in study_progress_line({}, {"a": 1}, {}, None)


def test_format_duration():
    assert format_duration(20) == "1 min"
    assert format_duration(59 * 60) == "59 min"
    assert format_duration(125 * 60) == "2 h 05 min"


def test_benchmark_seconds_reads_snakemakes_file(tmp_path):
    f = tmp_path / "b.tsv"
    f.write_text("s\th:m:s\tmax_rss\n12.5\t0:00:12\t100\n")
    assert benchmark_seconds(f) == 12.5
    assert benchmark_seconds(tmp_path / "missing.tsv") is None


def test_watch_study_reports_this_runs_jobs(tmp_path):
    def job(rule, i, seconds=None):
        bench = tmp_path / f"{rule}-{i}.tsv"
        if seconds is not None:
            bench.write_text(f"s\th:m:s\n{seconds}\t0\n")
        return SimpleNamespace(rule=SimpleNamespace(name=rule), benchmark=str(bench))

    jobs = [job("generate", 0, 10.0), job("generate", 1), job("evaluate", 0, 2.0)]
    finished = {id(jobs[0]), id(jobs[2])}
    dag = SimpleNamespace(
        needrun_jobs=lambda: iter(jobs),
        finished=lambda j: id(j) in finished,
        _running=[jobs[1]],
    )
    out = io.StringIO()
    watch_study(dag, max_jobs=2, interval=0.05, stream=out)
    time.sleep(0.3)
    finished.add(id(jobs[1]))
    time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert "2/3 jobs done (generate 1/2)" in lines[0]
    assert "running: generate x1" in lines[0]
    assert "min left" in lines[0]
    assert "3/3 jobs done (all rules done)" in lines[-1]
