"""The fork server runs a job as a fresh interpreter would (streams, directory, environment, exit code,
signals), and anything it cannot vouch for runs the ordinary way."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from resurgence import forkserver, phases
from resurgence.jobs import process_identity

# A job entry and its client, importable by name from the folder both processes start in.
ENTRY_MODULE = textwrap.dedent(
    """
    import json, os, sys, tempfile, time
    from pathlib import Path

    def job(argv):
        kind = argv[0]
        if kind == "report":
            print(json.dumps({"pid": os.getpid(), "cwd": os.getcwd(), "argv": argv,
                              "omp": os.environ.get("OMP_NUM_THREADS"), "tmp": tempfile.gettempdir()}))
            print("to stderr", file=sys.stderr)
            return int(argv[1])
        if kind == "wait":  # write our pid, then wait to be signalled
            Path(argv[1]).write_text(str(os.getpid()))
            time.sleep(60)
            return 0
        if kind == "raise":
            raise ValueError("a failing job")
        return 9

    if __name__ == "__main__":
        from resurgence.forkserver import run_in_server
        print(json.dumps({"client": os.getpid()}), file=sys.stderr, flush=True)
        code = run_in_server(sys.argv[1:], entry="fs_entry:job")
        sys.exit(job(sys.argv[1:]) if code is None else code)
    """
)


def wait_for(predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def server(tmp_path):
    """A server with nothing preloaded, started in ``tmp_path`` (where the entry module is); its env."""
    (tmp_path / "fs_entry.py").write_text(ENTRY_MODULE)
    sock = str(tmp_path / "s.sock")
    env = {k: v for k, v in os.environ.items() if k != forkserver.ADDRESS_ENV}
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "resurgence.forkserver", "--socket", sock, "--preload", "json"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    assert wait_for(lambda: Path(sock).exists()), (tmp_path / "server.log").read_text()
    addr = {"host": socket.gethostname(), "socket": sock, "python": sys.executable}
    yield proc, {**env, forkserver.ADDRESS_ENV: json.dumps(addr)}
    proc.terminate()
    proc.wait(10)


def start_client(tmp_path, env, *argv, out=None):
    out = out or tmp_path / "out.txt"
    return subprocess.Popen(
        [sys.executable, "-m", "fs_entry", *argv],
        cwd=tmp_path,
        env=env,
        stdout=open(out, "w"),
        stderr=subprocess.PIPE,
        text=True,
    )


def client_pid(proc) -> int:
    return json.loads(proc.stderr.readline())["client"]


def test_a_job_runs_in_a_fork_with_the_clients_streams_directory_environment_and_exit_code(server, tmp_path):
    _, env = server
    work = tmp_path / "work"
    work.mkdir()
    proc = start_client(tmp_path, {**env, "OMP_NUM_THREADS": "3", "TMPDIR": str(work)}, "report", "3")
    me = client_pid(proc)
    assert proc.wait(30) == 3
    report = json.loads((tmp_path / "out.txt").read_text())
    assert report["pid"] != me  # it ran in the server's fork, not in the client
    assert report["cwd"] == str(tmp_path)
    assert report["argv"] == ["report", "3"]
    assert report["omp"] == "3" and report["tmp"] == str(work)
    assert "to stderr" in proc.stderr.read()


def test_an_exception_is_reported_like_a_fresh_interpreters(server, tmp_path):
    _, env = server
    proc = start_client(tmp_path, env, "raise")
    client_pid(proc)
    assert proc.wait(30) == 1
    assert "ValueError: a failing job" in proc.stderr.read()


def test_a_job_whose_environment_differs_runs_on_its_own(server, tmp_path):
    _, env = server
    proc = start_client(tmp_path, {**env, "RESURGENCE_TEST_IMPORT_SETTING": "1"}, "report", "0")
    me = client_pid(proc)
    assert proc.wait(30) == 0
    assert json.loads((tmp_path / "out.txt").read_text())["pid"] == me
    assert "RESURGENCE_TEST_IMPORT_SETTING" in (tmp_path / "server.log").read_text()


def test_without_a_server_the_job_runs_on_its_own(tmp_path):
    (tmp_path / "fs_entry.py").write_text(ENTRY_MODULE)
    addr = {"host": socket.gethostname(), "socket": str(tmp_path / "none.sock"), "python": sys.executable}
    proc = start_client(tmp_path, {**os.environ, forkserver.ADDRESS_ENV: json.dumps(addr)}, "report", "4")
    me = client_pid(proc)
    assert proc.wait(30) == 4
    assert json.loads((tmp_path / "out.txt").read_text())["pid"] == me


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_client_reaches_the_job_and_its_status_comes_back(server, tmp_path, sig):
    _, env = server
    pidfile = tmp_path / "job.pid"
    proc = start_client(tmp_path, env, "wait", str(pidfile))
    client_pid(proc)
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text())
    proc.send_signal(sig)
    assert proc.wait(30) == 128 + sig  # as a shell reports a fresh interpreter ended by it


def test_a_killed_client_stops_its_job(server, tmp_path):
    _, env = server
    pidfile = tmp_path / "job.pid"
    proc = start_client(tmp_path, env, "wait", str(pidfile))
    client_pid(proc)
    assert wait_for(lambda: pidfile.exists() and pidfile.read_text())
    job = int(pidfile.read_text())
    proc.kill()
    proc.wait(10)

    def gone():
        try:
            os.kill(job, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{job}/stat").read_text().split(")")[1].split()[0] == "Z"

    assert wait_for(gone, timeout=20)


def test_the_server_ends_with_its_owner(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    sock = tmp_path / "s.sock"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "resurgence.forkserver",
            "--socket",
            str(sock),
            "--preload",
            "--owner",
            json.dumps(process_identity(owner.pid)),
        ],
    )
    assert wait_for(lambda: sock.exists())
    owner.wait()
    assert server.wait(20) == 0
    assert not sock.exists()


def test_env_mismatch_ignores_per_job_variables_only():
    base = {"PATH": "/bin", "OMP_NUM_THREADS": "2", "HOME": "/h"}
    job = {"PATH": "/bin", "OMP_NUM_THREADS": "4", "TMPDIR": "/x", "HOME": "/other", "EXTRA": "1"}
    assert forkserver.env_mismatch(base, job) == ["EXTRA", "HOME"]
    assert forkserver.env_mismatch(base, {**base, "CUDA_VISIBLE_DEVICES": "1"}) == []
    # Each job stamps its own start (`resurgence.phases`): that must not send every job down its own path.
    assert forkserver.env_mismatch({**base, phases.START_ENV: "1.0"}, {**base, phases.START_ENV: "2.0"}) == []


def test_refusal_names_another_interpreter_and_another_path():
    me = {"python": "/a/python", "path": ["/x"], "env": {}}
    assert forkserver.refusal(me, me) is None
    assert "interpreter" in forkserver.refusal(me, {**me, "python": "/b/python"})
    assert "sys.path" in forkserver.refusal(me, {**me, "path": ["/y"]})


@pytest.mark.parametrize(("how", "expected"), [("exit", 7), ("signal", 128 + signal.SIGTERM)])
def test_exit_code_is_the_shells(how, expected):
    code = (
        "import sys; sys.exit(7)"
        if how == "exit"
        else "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    _, status = os.waitpid(proc.pid, 0)
    proc.returncode = 0  # reaped above
    assert forkserver.exit_code(status) == expected


def test_server_address_is_for_this_host_and_interpreter_only():
    addr = {"host": socket.gethostname(), "socket": "/s", "python": sys.executable}
    assert forkserver.server_address({forkserver.ADDRESS_ENV: json.dumps(addr)}) == "/s"
    other = {**addr, "host": "elsewhere"}
    assert forkserver.server_address({forkserver.ADDRESS_ENV: json.dumps(other)}) is None
    assert forkserver.server_address({forkserver.ADDRESS_ENV: json.dumps({**addr, "python": "/x"})}) is None
    assert forkserver.server_address({}) is None
