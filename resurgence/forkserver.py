"""A warm interpreter for the study's jobs: import the heavy libraries once, fork one process per job.

Every Snakemake job is ``python -m resurgence <stage> ...``, and importing torch, diffusers,
transformers, open_clip, peft and the package takes 7-11 s on a 2-core CPU (docs/study_speed.md): for
the default study's ~380 jobs that is most of an hour of CPU time spent before any job does its work.
The Snakefile starts this server once per run (``onstart``, local execution only); a job whose
interpreter and environment match the server's hands it its arguments, working directory,
environment and standard streams, and the server forks a process that runs the stage exactly as
``python -m resurgence`` would. Each job is still one process writing one artifact; only the imports
are shared.

Anything the server cannot vouch for runs the ordinary way (`run_in_server` returns None): no server,
another host, another interpreter, or an environment that differs in a variable read at import time
(only the variables Snakemake, the shell and the GPU claim set per job may differ: `PER_JOB_ENV`).

Processes: server -> one session per job (relays signals, reports the exit status, stops the job if
its client dies) -> the job. The job's standard streams are the client's own descriptors, so
``> {log} 2>&1`` in a rule works unchanged.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resurgence.phases import START_ENV

ADDRESS_ENV = "RESURGENCE_FORKSERVER"  # JSON {"host", "socket", "python"} of this run's server
ENTRY = "resurgence.cli:main"  # what a job runs: ``python -m resurgence``'s main
# What the study's stages import (some only inside their functions); one that fails to import is skipped.
PRELOAD = (
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "open_clip",
    "torch_fidelity",
    "pandas",
    "resurgence.cli",
    "resurgence.stages",
    "resurgence.study",
    "resurgence.models.pipeline",
    "resurgence.models.clip",
    "resurgence.erasure.artifact",
    "resurgence.generate.engine",
    "resurgence.generate.grid",
    "resurgence.finetune.data",
    "resurgence.finetune.train",
    "resurgence.evaluate.registry",
    "resurgence.mace.erase",
    "resurgence.mace.images",
    "resurgence.mace.capacity",
    "resurgence.metrics.tables",
    "resurgence.metrics.figures",
    "resurgence.metrics.reversion",
    "resurgence.toyworld.detector",
)
# Variables that may differ between the server and a job: read lazily (thread pools, temp dirs, CUDA
# devices, the GPU claim) or by the shell alone. Any other difference sends the job down the ordinary path.
PER_JOB_ENV = frozenset(
    {
        "OMP_NUM_THREADS",
        "GOTO_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "TMPDIR",
        "TMP",
        "TEMP",
        "TEMPDIR",
        "CUDA_VISIBLE_DEVICES",
        ADDRESS_ENV,  # set after the server starts
        START_ENV,  # each job's own start (`resurgence.phases`)
        "PWD",  # the shell's own (bash unsets the prompts when it is not interactive)
        "OLDPWD",
        "SHLVL",
        "_",
        "PS1",
        "PS2",
    }
)
SIGNAL_CODES = {signal.SIGTERM: b"T", signal.SIGINT: b"I", signal.SIGHUP: b"H"}
READY_TIMEOUT_S = 120.0  # how long the Snakefile waits for the server's imports
STOP_GRACE_S = 30.0  # a job whose client died gets SIGTERM, then SIGKILL this much later
_HEADER = struct.Struct("!Q")


# ----------------------------------------------------------------------------- checks (pure)


def env_mismatch(server_env: Mapping[str, str], job_env: Mapping[str, str]) -> list[str]:
    """The variables, outside `PER_JOB_ENV`, whose value differs between the server and a job."""
    keys = (set(server_env) | set(job_env)) - PER_JOB_ENV
    return sorted(k for k in keys if server_env.get(k) != job_env.get(k))


def refusal(server: Mapping[str, Any], job: Mapping[str, Any]) -> str | None:
    """Why the server must not run ``job`` (None: it may). Both give ``python``, ``path`` and ``env``."""
    if job["python"] != server["python"]:
        return f"another interpreter ({job['python']}, the server runs {server['python']})"
    if job["path"] != server["path"]:
        return "another sys.path"
    keys = env_mismatch(server["env"], job["env"])
    if keys:
        return f"environment variables differ: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
    return None


def exit_code(status: int) -> int:
    """A shell's exit code for a ``waitpid`` status: the process's own, or 128 + the signal that ended it."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def interpreter() -> dict[str, Any]:
    """This process's interpreter as the server compares it."""
    return {"python": sys.executable, "path": list(sys.path), "env": dict(os.environ)}


# ----------------------------------------------------------------------------- framing


def _send(conn: socket.socket, obj: Any) -> None:
    data = json.dumps(obj).encode()
    conn.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-message")
        buf += chunk
    return buf


def _recv(conn: socket.socket) -> Any:
    (n,) = _HEADER.unpack(_recv_exact(conn, _HEADER.size))
    return json.loads(_recv_exact(conn, n))


# ----------------------------------------------------------------------------- client (in the job's shell)


def server_address(environ: Mapping[str, str] = os.environ) -> str | None:
    """The socket of this host's server named in the environment, or None."""
    raw = environ.get(ADDRESS_ENV)
    if not raw:
        return None
    try:
        addr = json.loads(raw)
    except ValueError:
        return None
    if addr.get("host") != socket.gethostname() or addr.get("python") != sys.executable:
        return None
    return addr.get("socket")


def run_in_server(argv: Sequence[str], entry: str = ENTRY) -> int | None:
    """Run ``entry(argv)`` in the server's fork; its exit code, or None when it must run here instead.

    SIGTERM, SIGINT and SIGHUP received here are passed on to the job, and this process waits for it
    to end; if this process dies, the server stops the job.
    """
    path = server_address()
    if path is None:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        header = _HEADER.pack(0)
        socket.send_fds(conn, [header], [0, 1, 2])
        _send(conn, {**interpreter(), "cwd": os.getcwd(), "argv": list(argv), "entry": entry})
        first = _recv(conn)
    except (OSError, ConnectionError, ValueError):
        conn.close()
        return None
    if "fallback" in first:
        conn.close()
        return None

    def relay(signum, frame):  # noqa: ARG001
        with contextlib.suppress(OSError):
            conn.sendall(SIGNAL_CODES[signum])

    for sig in SIGNAL_CODES:
        signal.signal(sig, relay)
    try:
        return int(_recv(conn)["exit"])
    except (OSError, ConnectionError, ValueError, KeyError):
        print("resurgence: the fork server ended without reporting the job's exit status", file=sys.stderr)
        return 1


# ----------------------------------------------------------------------------- server


def _job(request: dict[str, Any], fds: list[int]) -> None:
    """In the job's process: take the client's streams, directory and environment, run the entry, exit."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.stdout.flush()
        sys.stderr.flush()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for key, value in request.get("preload_env", {}).items():  # what the imports set, as in a fresh job
            os.environ.setdefault(key, value)
        tempfile.tempdir = None  # re-read TMPDIR
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(threads))
        sys.argv = ["resurgence", *request["argv"]]
        module, _, name = request["entry"].partition(":")
        result = getattr(importlib.import_module(module), name)(list(request["argv"]))
        code = result if isinstance(result, int) else 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt:  # a fresh interpreter ends by SIGINT: the shell sees 130
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - the job's traceback goes to its log, as in a fresh interpreter
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _session(conn: socket.socket, server: dict[str, Any]) -> None:
    """In a fork of the server: check the request, fork the job, relay signals, report its exit."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    fds: list[int] = []
    try:
        _, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        request = _recv(conn)
    except (OSError, ConnectionError, ValueError):
        os._exit(1)
    reason = refusal(server, request) or (None if len(fds) == 3 else "the client's streams did not arrive")
    if reason:
        print(f"fork server: {' '.join(request.get('argv', [])[:1])} runs on its own: {reason}", flush=True)
        _send(conn, {"fallback": reason})
        os._exit(0)
    # Said before the fork: a client told nothing would run the job itself, and must not if it started.
    _send(conn, {"started": True})
    request["preload_env"] = server["preload_env"]
    pid = os.fork()
    if pid == 0:
        conn.close()
        _job(request, fds)
    for fd in fds:
        os.close(fd)
    codes = {v: k for k, v in SIGNAL_CODES.items()}
    stop_at, started = None, time.monotonic()
    stage = " ".join(request["argv"][:2])
    print(f"fork server: PID {pid} runs {stage!r}", flush=True)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = exit_code(status)
            print(
                f"fork server: PID {pid} ended with {code} after {time.monotonic() - started:.1f} s",
                flush=True,
            )
            try:
                _send(conn, {"exit": code})
            finally:
                os._exit(0)
        if stop_at is not None:
            if time.monotonic() > stop_at:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            continue
        ready, _, _ = select.select([conn], [], [], 0.2)
        if ready:
            data = conn.recv(16)
            if not data:  # the client died: stop the job
                os.kill(pid, signal.SIGTERM)
                stop_at = time.monotonic() + STOP_GRACE_S
            for byte in data:
                os.kill(pid, codes.get(bytes([byte]), signal.SIGTERM))


def preload(modules: Sequence[str] = PRELOAD) -> dict[str, str]:
    """Import ``modules``; what failed, by name (a job that needs one imports it itself)."""
    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - optional: the job pays the import instead
            failed[name] = f"{type(e).__name__}: {e}"
    return failed


def preload_before_forks(modules: Sequence[str] = PRELOAD) -> dict[str, str]:
    """`preload` without initialising CUDA, which a fork cannot inherit; raises where CUDA was initialised."""
    # torch.cuda.is_available() without NVML initialises the CUDA driver.
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    try:
        failed = preload(modules)
    finally:
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised while preloading; jobs could not use it after a fork")
    return failed


def serve(
    path: str | os.PathLike, owner: dict[str, Any] | None = None, modules: Sequence[str] = PRELOAD
) -> None:
    """Preload ``modules``, then serve jobs on the Unix socket ``path`` until SIGTERM or ``owner`` ends."""
    from resurgence.jobs import is_running

    server = interpreter()  # as a job's fresh interpreter starts: before the imports
    t0 = time.monotonic()
    failed = preload_before_forks(modules)
    server["preload_env"] = {k: v for k, v in os.environ.items() if k not in server["env"]}
    threads = len(os.listdir("/proc/self/task")) if Path("/proc/self/task").is_dir() else None
    print(
        f"fork server: {len(modules) - len(failed)} modules in {time.monotonic() - t0:.1f} s, threads {threads}"
        + "".join(f"\n  not preloaded: {k} ({v})" for k, v in failed.items()),
        flush=True,
    )

    def stop(signum, frame):  # noqa: ARG001
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        tmp = f"{path}.{os.getpid()}"
        sock.bind(tmp)
        os.replace(tmp, path)  # clients never see a bound socket that does not listen yet
    finally:
        os.umask(old)
    sock.listen(64)
    try:
        while owner is None or is_running(owner):
            ready, _, _ = select.select([sock], [], [], 1.0)
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                pass
            if not ready:
                continue
            conn, _ = sock.accept()
            if os.fork() == 0:
                sock.close()
                try:
                    _session(conn, server)
                finally:
                    os._exit(1)
            conn.close()
    finally:
        sock.close()
        Path(path).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- in the Snakefile


def start_server(log_path: str | os.PathLike, python: str | None = None) -> dict[str, Any]:
    """Start a server for this (Snakemake) process's jobs and name it in the environment they inherit.

    It stops when this process ends (`resurgence.jobs.OWNER_ENV` names it) or on `stop_server`. Waits
    until it listens; if it does not, jobs run the ordinary way. Returns its address.
    """
    import shutil
    import subprocess

    from resurgence.jobs import OWNER_ENV

    python = python or shutil.which("python") or sys.executable
    # Readable by this user alone (the server binds it under umask 077); one per Snakemake process.
    sock = Path(tempfile.gettempdir()) / f"resurgence-fork-{os.getuid()}-{os.getpid()}.sock"
    addr = {"host": socket.gethostname(), "socket": str(sock), "python": None}
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "resurgence.forkserver", "--socket", addr["socket"]]
    if OWNER_ENV in os.environ:
        cmd += ["--owner", os.environ[OWNER_ENV]]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    # The interpreter the jobs compare with is the one the server runs (a venv's python is a symlink).
    addr["python"] = subprocess.run(
        [python, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    addr["pid"] = proc.pid
    # Jobs started before it listens would pay the imports themselves: wait for it (seconds, once).
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not Path(addr["socket"]).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not Path(addr["socket"]).exists():
        print(
            f"resurgence: the fork server did not start (see {log_path}); jobs start on their own",
            file=sys.stderr,
        )
        proc.kill()
        return addr
    os.environ[ADDRESS_ENV] = json.dumps(addr)
    return addr


def stop_server(environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Stop the server named in the environment, if any (jobs then run the ordinary way)."""
    raw = environ.pop(ADDRESS_ENV, None)
    if not raw:
        return
    addr = json.loads(raw)
    with contextlib.suppress(ProcessLookupError, KeyError, ValueError):
        os.kill(int(addr["pid"]), signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m resurgence.forkserver", description=__doc__.split("\n")[0])
    p.add_argument("--socket", required=True)
    p.add_argument(
        "--owner", type=json.loads, default=None, help="stop when this process ends (JSON identity)"
    )
    p.add_argument("--preload", nargs="*", default=PRELOAD, help="modules to import before serving")
    args = p.parse_args(argv)
    serve(args.socket, owner=args.owner, modules=args.preload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
