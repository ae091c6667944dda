"""The run's own MPS daemon (`resurgence.mps`), with a stand-in for nvidia-cuda-mps-control that records how
it was called: its arguments, its standard input and the MPS folders in its environment."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from resurgence.mps import CONTROL, LOG_ENV, PIPE_ENV, start_mps, stop_mps, wanted


def fake_control(bin_dir: Path, record: Path, exit_code: int = 0) -> Path:
    """A control program that appends one JSON line per call to ``record`` and exits with ``exit_code``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    program = bin_dir / CONTROL
    program.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"line = dict(argv=sys.argv[1:], stdin='' if sys.argv[1:] else sys.stdin.read(),"
        f" pipe=os.environ.get({PIPE_ENV!r}), log=os.environ.get({LOG_ENV!r}))\n"
        f"open({str(record)!r}, 'a').write(json.dumps(line) + '\\n')\n"
        f"print('no GPU here', file=sys.stderr) if {exit_code} else None\n"
        f"sys.exit({exit_code})\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def calls(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def test_the_run_starts_a_daemon_of_its_own_names_it_to_the_jobs_and_stops_it(tmp_path, capsys, monkeypatch):
    record = tmp_path / "calls.jsonl"
    environ = {"PATH": str(fake_control(tmp_path / "bin", record))}
    monkeypatch.chdir(tmp_path)
    daemon = start_mps("logs/mps", environ)  # named absolute: the daemon leaves the working folder
    assert daemon is not None
    pipe = Path(environ[PIPE_ENV])
    assert (
        pipe.is_dir() and pipe != tmp_path and environ[LOG_ENV] == str((tmp_path / "logs" / "mps").resolve())
    )
    assert (tmp_path / "logs" / "mps").is_dir()
    assert stat.S_IMODE(pipe.stat().st_mode) == 0o700  # this user's alone
    [start] = calls(record)
    assert start["argv"] == ["-d"] and start["pipe"] == str(pipe) and start["log"] == environ[LOG_ENV]
    assert "through an MPS daemon of this run" in capsys.readouterr().err

    stop_mps(daemon, environ)
    stop = calls(record)[1]
    assert stop["argv"] == [] and stop["stdin"] == "quit\n" and stop["pipe"] == str(pipe)
    assert PIPE_ENV not in environ and LOG_ENV not in environ and not pipe.exists()


def test_a_daemon_named_already_is_used_and_none_started(tmp_path, capsys):
    record = tmp_path / "calls.jsonl"
    environ = {"PATH": str(fake_control(tmp_path / "bin", record)), PIPE_ENV: "/tmp/theirs"}
    assert start_mps(tmp_path / "mps", environ) is None
    assert calls(record) == [] and environ[PIPE_ENV] == "/tmp/theirs"
    assert "/tmp/theirs" in capsys.readouterr().err
    stop_mps(None, environ)  # nothing of ours to stop
    assert environ[PIPE_ENV] == "/tmp/theirs"


def test_without_the_control_program_the_jobs_share_the_gpu_without_mps(tmp_path, capsys):
    environ = {"PATH": str(tmp_path / "empty")}
    assert start_mps(tmp_path / "mps", environ) is None
    assert PIPE_ENV not in environ and LOG_ENV not in environ
    assert f"{CONTROL} is not on PATH" in capsys.readouterr().err


def test_a_daemon_that_does_not_start_leaves_nothing_named_or_behind(tmp_path, capsys, monkeypatch):
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    environ = {"PATH": str(fake_control(tmp_path / "bin", record, exit_code=1))}
    assert start_mps(tmp_path / "mps", environ) is None
    assert PIPE_ENV not in environ and LOG_ENV not in environ
    assert os.listdir(tmp_path / "tmp") == []  # its pipe folder is removed
    err = capsys.readouterr().err
    assert "exited with 1" in err and "no GPU here" in err


def test_a_bad_sharing_value_is_rejected_naming_the_key_and_the_values():
    from resurgence.config import ConfigError, load_config
    from resurgence.mps import SHARING

    root = Path(__file__).resolve().parents[1]
    assert load_config([root / "config.yaml"])["gpu_sharing"] == "auto"
    with pytest.raises(ConfigError, match="gpu_sharing") as err:
        load_config([root / "config.yaml"], {"gpu_sharing": "mpss"})
    assert all(value in str(err.value) for value in SHARING)


def test_auto_starts_a_daemon_where_jobs_share_a_gpu_and_mps_wherever_there_is_one():
    assert wanted("auto", devices=1, slots=16) and wanted("auto", devices=2, slots=4)
    assert not wanted("auto", devices=1, slots=1)  # a GPU a job (the SD presets): nothing is shared
    assert not wanted("auto", devices=0, slots=0) and not wanted("mps", devices=0, slots=0)
    assert wanted("mps", devices=1, slots=1) and not wanted("time_slicing", devices=1, slots=16)
    with pytest.raises(ValueError, match="allowed values"):
        wanted("always", devices=1, slots=16)


def test_the_watcher_quits_the_daemon_when_the_run_ends_without_doing_so(tmp_path):
    """A run killed before its `onerror` still leaves no daemon: the watcher sees its owner end and quits it."""
    import subprocess
    import time

    from resurgence.jobs import OWNER_ENV, process_identity

    record = tmp_path / "calls.jsonl"
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        environ = {
            "PATH": str(fake_control(tmp_path / "bin", record)),
            OWNER_ENV: json.dumps(process_identity(owner.pid)),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        }
        daemon = start_mps(tmp_path / "mps", environ)
        assert daemon is not None
        time.sleep(2)
        assert len(calls(record)) == 1 and daemon.pipe_dir.exists()  # the owner runs: the daemon stays
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 30
    while daemon.pipe_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not daemon.pipe_dir.exists()
    assert calls(record)[1]["stdin"] == "quit\n"
