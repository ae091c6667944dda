"""Per-job GPU assignment: concurrent jobs on one node must get distinct devices."""

import multiprocessing as mp
import os

import pytest

from resurgence.gpus import (
    CPU_JOB_THREADS,
    DEVICES_ENV,
    SLOTS_ENV,
    claim_gpu,
    count_gpus,
    default_gpu_slots,
    job_threads,
    pin_job_to_gpu,
)


def _claim_and_wait(lock_dir, ready, release, out):
    out.put(claim_gpu(3, lock_dir, timeout_s=5))
    ready.set()
    release.wait(10)


def test_concurrent_jobs_claim_distinct_gpus_and_exit_releases_them(tmp_path):
    ctx = mp.get_context("spawn")
    out, release = ctx.Queue(), ctx.Event()
    procs, readies = [], []
    for _ in range(3):
        ready = ctx.Event()
        p = ctx.Process(target=_claim_and_wait, args=(tmp_path, ready, release, out))
        p.start()
        assert ready.wait(30)
        procs.append(p)
        readies.append(ready)
    assert sorted(out.get(timeout=5) for _ in range(3)) == [0, 1, 2]
    with pytest.raises(TimeoutError, match="no free GPU among 3"):
        claim_gpu(3, tmp_path, timeout_s=0.2, poll_s=0.05)
    release.set()
    for p in procs:
        p.join(10)
    assert claim_gpu(3, tmp_path, timeout_s=1) == 0  # the exited jobs' locks are gone


def test_pin_sets_cuda_visible_devices_only_when_there_is_something_to_share(tmp_path, monkeypatch):
    monkeypatch.setenv("RESURGENCE_GPU_LOCK_DIR", str(tmp_path))
    assert pin_job_to_gpu({SLOTS_ENV: "1"}) is None  # one GPU: nothing to choose
    assert pin_job_to_gpu({SLOTS_ENV: "4", "CUDA_VISIBLE_DEVICES": "2"}) is None  # the scheduler chose
    env = {SLOTS_ENV: "2"}
    i = pin_job_to_gpu(env)
    assert env["CUDA_VISIBLE_DEVICES"] == str(i) and i in (0, 1)


def test_more_slots_than_gpus_spread_jobs_over_the_devices(tmp_path, monkeypatch):
    """4 slots on 2 GPUs: the first two jobs get a device each, the next two share them (was: devices 2, 3)."""
    monkeypatch.setenv("RESURGENCE_GPU_LOCK_DIR", str(tmp_path))
    ctx = mp.get_context("spawn")
    out, release = ctx.Queue(), ctx.Event()
    procs = []
    for _ in range(4):
        ready = ctx.Event()
        p = ctx.Process(target=_pin_and_wait, args=(str(tmp_path), ready, release, out))
        p.start()
        assert ready.wait(30)
        procs.append(p)
    assert [out.get(timeout=5) for _ in range(4)] == ["0", "1", "0", "1"]
    release.set()
    for p in procs:
        p.join(10)


def _pin_and_wait(lock_dir, ready, release, out):
    os.environ["RESURGENCE_GPU_LOCK_DIR"] = lock_dir  # a spawned process: the parent's monkeypatch is gone
    env = {SLOTS_ENV: "4", DEVICES_ENV: "2"}
    pin_job_to_gpu(env)
    out.put(env["CUDA_VISIBLE_DEVICES"])
    ready.set()
    release.wait(10)


def test_one_gpu_is_shared_without_pinning(tmp_path, monkeypatch):
    monkeypatch.setenv("RESURGENCE_GPU_LOCK_DIR", str(tmp_path))
    env = {SLOTS_ENV: "4", DEVICES_ENV: "1"}
    assert pin_job_to_gpu(env) is None and "CUDA_VISIBLE_DEVICES" not in env


def test_count_gpus_reads_visible_devices_then_the_driver(tmp_path):
    proc = tmp_path / "gpus"
    for bus in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        (proc / bus).mkdir(parents=True)
    assert count_gpus({}, proc) == 3
    assert count_gpus({"CUDA_VISIBLE_DEVICES": "1,2"}, proc) == 2
    assert count_gpus({"CUDA_VISIBLE_DEVICES": ""}, proc) == 0
    assert count_gpus({}, tmp_path / "no-driver") == 0


def test_default_gpu_slots_share_each_gpu_and_leave_cpu_machines_unbounded():
    assert default_gpu_slots(1, 4) == 4
    assert default_gpu_slots(8, 1) == 8
    assert default_gpu_slots(0, 4) is None


def test_gpu_jobs_take_the_configured_threads_only_where_there_is_a_gpu():
    assert job_threads(1, 1) == 1
    assert job_threads(2, 3) == 3
    assert job_threads(0, 1) == CPU_JOB_THREADS
    with pytest.raises(ValueError, match="gpu_job_threads"):
        job_threads(1, 0)
