"""A one-node Slurm cluster on localhost for the tests: munge, slurmctld and slurmd in a folder.

`.ci/run` installs Debian's slurm-wlm and munge where it runs as root; elsewhere `unavailable()` says
why there is no cluster and the Slurm tests skip with that reason. The daemons run in the foreground
as this process's children, so `stop()` ends them by their PIDs whatever the tests did.

The node advertises more CPUs and memory than the machine has (``SlurmdParameters=config_overrides``)
so that every rule's request fits, and GPUs as a GRES backed by character devices (/dev/null, ...), so that GPU rules are
scheduled and their requests can be read back. Two partitions, ``gpu`` and ``cpu``, are the ones
`workflow/profiles/slurm` names. slurm.conf and gres.conf go where a cluster's clients find them,
/etc/slurm (the executor's job step drops ``SLURM_CONF`` from the environment of the ``srun`` it
calls), and are removed by `stop()`; a machine that already has a /etc/slurm/slurm.conf gets no test
cluster. There is no accounting database: the executor is told to query job
states with ``squeue`` (``MinJobAge`` keeps finished jobs visible for an hour), and finished jobs are
written to a job-completion file.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo", "scancel")
PARTITIONS = ("gpu", "cpu")
CONF_DIR = Path("/etc/slurm")
# Device files the GPU GRES is "backed" by: any character devices, one per GPU (Slurm refuses repeats).
GPU_STAND_INS = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")
CLUSTER_NAME = "resurgence-test"


def unavailable() -> str | None:
    """Why no cluster can be started here (None when one can)."""
    missing = [b for b in DAEMONS + CLIENTS if shutil.which(b) is None]
    if missing:
        return (
            f"Slurm is not installed ({', '.join(missing)} missing; Debian: apt-get install slurm-wlm munge)"
        )
    if os.geteuid() != 0:
        return "starting munged, slurmctld and slurmd needs root"
    conf = CONF_DIR / "slurm.conf"
    if conf.exists() and not is_leftover(conf):
        return f"{conf} exists (a real cluster's?); the test cluster would replace it"
    return None


def is_leftover(conf: Path) -> bool:
    """Whether ``conf`` is this module's own, left by a test session that was killed before `stop()`
    (seen 2026-12-04: every later run then skipped its Slurm tests); such a file is replaced."""
    lines = conf.read_text(errors="replace").splitlines()
    return bool(lines) and lines[0].strip() == f"ClusterName={CLUSTER_NAME}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(ready, timeout: float) -> bool:
    """Poll ``ready`` every 0.5 s; whether it became true within ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > end:
            return False
        time.sleep(0.5)
    return True


def slurm_conf(root: Path, host: str, cpus: int, mem_mb: int, gpus: int) -> str:
    ports = _free_port(), _free_port()
    lines = [
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root / 'munge.socket'}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={root / 'jobcomp.log'}",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU_Memory",
        "SlurmdParameters=config_overrides",
        "MpiDefault=none",
        "ReturnToService=2",
        "MinJobAge=3600",
        "GresTypes=gpu",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} Gres=gpu:{gpus} State=UNKNOWN",
    ]
    for i, name in enumerate(PARTITIONS):
        default = "YES" if i == 0 else "NO"
        lines.append(f"PartitionName={name} Nodes=ALL Default={default} MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


class SlurmCluster:
    """Start with `start()`, end with `stop()`; `env` is what clients (sbatch, Snakemake) need."""

    def __init__(self, root: Path, cpus: int = 8, mem_mb: int = 64000, gpus: int = 1) -> None:
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.cpus, self.mem_mb, self.gpus = cpus, mem_mb, gpus
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = CONF_DIR / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    @property
    def job_completions(self) -> Path:
        return self.root / "jobcomp.log"

    def start(self, timeout: float = 60) -> None:
        r = self.root
        for d in ("state", "spool"):
            (r / d).mkdir(parents=True, exist_ok=True)
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        if self.gpus > len(GPU_STAND_INS):
            raise ValueError(f"at most {len(GPU_STAND_INS)} GPUs (one device file each)")
        devices = ",".join(GPU_STAND_INS[: self.gpus])
        try:
            CONF_DIR.mkdir(parents=True, exist_ok=True)
            self.conf.write_text(slurm_conf(r, self.host, self.cpus, self.mem_mb, self.gpus))
            (CONF_DIR / "gres.conf").write_text(
                f"AutoDetect=off\nNodeName={self.host} Name=gpu File={devices}\n"
            )
            self._spawn(
                "munged",
                ["munged", "-F", "-f", f"--key-file={key}", f"--socket={r / 'munge.socket'}",
                 f"--pid-file={r / 'munged.pid'}", f"--log-file={r / 'munged.log'}",
                 f"--seed-file={r / 'munged.seed'}"],
            )  # fmt: skip
            self._wait(lambda: (r / "munge.socket").exists(), timeout, "munged's socket")
            self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
            self._spawn("slurmd", ["slurmd", "-D"])
            self._wait(self._node_idle, timeout, "the node to be idle")
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / f"{name}.out", "w")  # noqa: SIM115 (the daemon keeps it)
        self.procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )

    def _node_idle(self) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}): {self.logs()}")
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=self.env, check=False
        )
        return out.returncode == 0 and out.stdout.split()[:1] == ["idle"]

    def _wait(self, ready, timeout: float, what: str) -> None:
        if not _wait_until(ready, timeout):
            raise TimeoutError(f"Slurm test cluster: no {what} after {timeout} s\n{self.logs()}")

    def _no_jobs(self) -> bool:
        out = subprocess.run(
            ["squeue", "-h", "-t", "PENDING,RUNNING,COMPLETING", "-o", "%i"],
            capture_output=True, text=True, env=self.env, check=False,
        )  # fmt: skip
        return out.returncode != 0 or not out.stdout.strip()

    def logs(self) -> str:
        out = []
        for f in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")):
            out.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-20:]))
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel every job left, then end the daemons by their PIDs (slurmd first), each given 10 s
        before it is killed."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(
                ["scancel", "--full", "--user", "root"], env=self.env, capture_output=True, check=False
            )
            _wait_until(self._no_jobs, 20)  # then the daemons go whatever is left
        for name in reversed(list(self.procs)):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for name in ("slurm.conf", "gres.conf"):
            (CONF_DIR / name).unlink(missing_ok=True)

    def scontrol_job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` of one job as key -> value."""
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id],
            capture_output=True,
            text=True,
            env=self.env,
            check=True,
        ).stdout
        fields = {}
        for item in out.split():
            key, _, value = item.partition("=")
            fields[key] = value
        return fields
