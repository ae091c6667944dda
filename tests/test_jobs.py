"""A job's hold on what it writes: one writer per folder, no job outliving its Snakemake run, stale locks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resurgence import jobs

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **(env or {})}, text=True, **kw
    )


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _dead_identity() -> dict[str, object]:
    proc = subprocess.Popen(["sleep", "30"])
    identity = jobs.process_identity(proc.pid)
    proc.kill()
    proc.wait()
    return identity


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="start times from /proc are Linux's")
def test_a_live_process_stays_recognised_when_the_system_clock_moves(monkeypatch):
    """psutil's create_time is the boot time as the clock says now plus the start offset: a clock step
    (NTP) moved it, and the study's jobs took their live Snakemake run for ended and stopped."""
    import psutil

    live = subprocess.Popen(["sleep", "30"])
    try:
        identity = jobs.process_identity(live.pid)
        assert jobs.is_running(identity)
        real = psutil.Process.create_time
        monkeypatch.setattr(psutil.Process, "create_time", lambda self: real(self) + 1.5)  # the clock stepped
        assert jobs.is_running(identity)
        assert jobs.is_running({**identity, "started": identity["started"] + 1}) is False  # another process
    finally:
        live.kill()
        live.wait()
    assert jobs.is_running(identity) is False


def test_a_second_writer_is_refused_naming_the_holder_until_the_holder_dies(tmp_path):
    holder = _python(
        "import sys, time\nfrom resurgence.jobs import exclusive_writer\n"
        f"with exclusive_writer({str(tmp_path)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n",
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(jobs.ArtifactBusy, match=f"PID {holder.pid} on"), jobs.exclusive_writer(tmp_path):
            pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the kernel releases the lock
        holder.wait()
    with jobs.exclusive_writer(tmp_path):
        assert f"PID {os.getpid()}" in (tmp_path / jobs.LOCK_FILE).read_text()


JOB = """
import sys, time
from resurgence.jobs import stop_on_sigterm, watch_owner
stop_on_sigterm()
assert watch_owner(interval=0.1, grace=10)
print("running", flush=True)
try:
    time.sleep(60)
finally:
    open(sys.argv[1], "w").write("cleaned up")
"""


def test_a_job_stops_when_its_snakemake_process_dies(tmp_path):
    owner = subprocess.Popen(["sleep", "60"])
    env = {jobs.OWNER_ENV: json.dumps(jobs.process_identity(owner.pid))}
    job = subprocess.Popen(
        [sys.executable, "-c", JOB, str(tmp_path / "marker")],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert job.stdout.readline().strip() == "running"
        time.sleep(0.5)
        assert job.poll() is None  # the owner lives: the job runs on
        owner.kill()
        owner.wait()
        assert job.wait(timeout=15) == 128 + signal.SIGTERM
        assert (tmp_path / "marker").read_text() == "cleaned up"  # ended through Python's exit path
    finally:
        for p in (owner, job):
            p.kill()


def test_a_job_stops_when_it_loses_its_parent_shell(tmp_path):
    """Snakemake stops a job by signalling its shell, which dies and leaves the job behind."""
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {**os.environ, jobs.OWNER_ENV: json.dumps(jobs.process_identity())}  # the owner (this test) lives
    shell = subprocess.Popen(
        ["bash", "-c", f"{sys.executable} {script} {tmp_path / 'marker'}; true"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert shell.stdout.readline().strip() == "running"
    shell.kill()
    shell.wait()
    assert _wait_for(lambda: (tmp_path / "marker").exists(), timeout=15)


def test_no_watch_outside_a_study_run():
    assert jobs.watch_owner({}) is False


def _locks(root: Path) -> list[Path]:
    (root / "locks").mkdir(parents=True, exist_ok=True)
    for name in ("0.input.lock", "0.output.lock"):
        (root / "locks" / name).write_text("results/x\n")
    return sorted((root / "locks").iterdir())


def _record(root: Path, identity: dict[str, object]) -> None:
    (root / jobs.RUNS_DIR).mkdir(parents=True, exist_ok=True)
    (root / jobs.RUNS_DIR / f"{identity['host']}-{identity['pid']}.json").write_text(json.dumps(identity))


def test_locks_of_an_ended_run_are_released(tmp_path):
    root = tmp_path / ".snakemake"
    locks = _locks(root)
    dead = _dead_identity()
    _record(root, dead)
    assert jobs.release_stale_locks(root) == [dead["pid"]]
    assert not any(p.exists() for p in locks)
    records = list((root / jobs.RUNS_DIR).iterdir())
    assert [json.loads(r.read_text())["pid"] for r in records] == [os.getpid()]  # this run, recorded


def test_locks_are_kept_while_any_recorded_run_lives(tmp_path):
    root = tmp_path / ".snakemake"
    locks = _locks(root)
    _record(root, _dead_identity())
    live = subprocess.Popen(["sleep", "30"])
    try:
        _record(root, jobs.process_identity(live.pid))
        _record(
            root, {**jobs.process_identity(), "host": "another-node", "pid": 1}
        )  # cannot be checked: lives
        assert jobs.release_stale_locks(root) == []
        assert all(p.exists() for p in locks)
    finally:
        live.kill()


def test_locks_nobody_recorded_are_kept(tmp_path):
    root = tmp_path / ".snakemake"
    locks = _locks(root)
    assert jobs.release_stale_locks(root) == [] and all(p.exists() for p in locks)


def test_a_run_removes_its_record_when_it_exits(tmp_path):
    root = tmp_path / ".snakemake"
    proc = _python(f"from resurgence.jobs import release_stale_locks\nrelease_stale_locks({str(root)!r})")
    assert proc.wait(timeout=30) == 0
    assert list((root / jobs.RUNS_DIR).iterdir()) == []
