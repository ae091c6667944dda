"""Running the workflow as users run it, and parsing Snakemake's output, in the workflow tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a study directory needs from the repository (its results/ and .snakemake/ are its own).
WORKFLOW_FILES = ("Snakefile", "workflow", "config.yaml", "config.smoke.yaml", "resources", "envs")


def run(
    cmd: list[str], cwd: Path = ROOT, check: bool = True, timeout: int = 1800, **env: str
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def snakemake(*args: str, cwd: Path = ROOT, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "snakemake", *args], cwd=cwd, check=check, **env)


def study_dir(path: Path) -> Path:
    """A working directory that sees the repository's workflow and shipped models, with its own results/."""
    path.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        (path / name).symlink_to(ROOT / name)
    return path


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from Snakemake's 'Job stats' table."""
    counts: dict[str, int] = {}
    block = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def job_blocks(output: str) -> list[tuple[str, str]]:
    """Each job a dry run states, as (rule, the job's block of text)."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            jobs.append((m.group(1), block))
    return jobs


def job_field(block: str, field: str) -> str | None:
    """A field (``threads``, ``priority``, ``wildcards``) of one job's block; None where it states none."""
    m = re.search(rf"^\s+{field}: (.+)$", block, re.M)
    return m.group(1).strip() if m else None


def rule_values(output: str, field: str, default: int) -> dict[str, set[int]]:
    """The values a dry run states for ``field`` (``threads``, ``priority``) in each rule's jobs; ``default``
    for a job that states none (Snakemake leaves out one thread and priority 0)."""
    values: dict[str, set[int]] = {}
    for rule, block in job_blocks(output):
        v = job_field(block, field)
        values.setdefault(rule, set()).add(int(v) if v is not None else default)
    return values
