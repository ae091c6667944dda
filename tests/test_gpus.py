"""Per-job GPU assignment: concurrent jobs on one node must get distinct devices."""

import multiprocessing as mp

import pytest

from resurgence.gpus import SLOTS_ENV, claim_gpu, pin_job_to_gpu


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
