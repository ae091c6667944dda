"""Every third-party module the project imports comes from a distribution it declares.

A machine's own site-packages can hide a missing dependency (scipy was one): CI installs into a new
virtual environment, and this test names any import that only such a machine would satisfy.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[1]
# The project's own code, and what its rules and tests import.
SOURCES = {
    "resurgence": "*.py",
    "benchmarks": "*.py",
    "tests": "*.py",
    "tools": "*.py",
    "workflow": "*.smk",
}
SNAKEFILE = ROOT / "Snakefile"
# Imported by name on machines that have them, never installed by us: each is guarded by the code that
# uses it (the GCD celebrity classifier's worker runs in its own environment; see evaluate/celebrity.py).
OPTIONAL = {"model_training"}
_IMPORT_LINE = re.compile(r"^\s*(import|from)\s+[A-Za-z_]")
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse(path: Path) -> ast.Module:
    """A Python file as it is; a Snakemake file by its import lines (the rest is not Python)."""
    text = path.read_text()
    if path.suffix == ".py":
        return ast.parse(text, filename=str(path))
    statements, lines = [], iter(text.splitlines())
    for line in lines:
        if _IMPORT_LINE.match(line):
            statement = line.strip()
            while statement.count("(") > statement.count(")"):
                statement += " " + next(lines).strip()
            statements.append(statement)
    return ast.parse("\n".join(statements), filename=str(path))


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one file (inside functions too)."""
    names = set()
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def project_files() -> list[Path]:
    files = [SNAKEFILE]
    for folder, pattern in SOURCES.items():
        files += sorted((ROOT / folder).rglob(pattern))
    return [f for f in files if "__pycache__" not in f.parts]


def local_modules() -> set[str]:
    """Names that resolve to the project's own files: its packages and the modules beside each file."""
    names = set(SOURCES)
    for f in project_files():
        names.add(f.stem)
        names |= {p.name for p in f.parent.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    return names


def declared_distributions() -> set[str]:
    """The distributions pyproject.toml declares: dependencies and every optional group."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for group in project.get("optional-dependencies", {}).values():
        reqs += group
    return {_normalise(_REQUIREMENT_NAME.match(r).group(1)) for r in reqs}


def third_party_imports() -> dict[str, set[str]]:
    """Each third-party top-level module -> the project files importing it."""
    skip = set(sys.stdlib_module_names) | local_modules() | OPTIONAL | {"__future__"}
    out: dict[str, set[str]] = {}
    for f in project_files():
        for name in imported_modules(f) - skip:
            out.setdefault(name, set()).add(str(f.relative_to(ROOT)))
    return out


def test_the_import_walk_sees_imports_in_functions_and_in_snakemake_files(tmp_path):
    py = tmp_path / "m.py"
    py.write_text("import os.path\nfrom a.b import c\nfrom . import d\n\ndef f():\n    import e\n")
    assert imported_modules(py) == {"os", "a", "e"}
    smk = tmp_path / "r.smk"
    smk.write_text(
        'import json\nfrom f import (\n    g,\n    h,\n)\n\nrule x:\n    shell:\n        "from here import nothing"\n'
    )
    assert imported_modules(smk) == {"json", "f"}


def test_every_third_party_import_is_declared():
    provided = metadata.packages_distributions()
    declared = declared_distributions()
    problems = []
    for module, files in sorted(third_party_imports().items()):
        dists = {_normalise(d) for d in provided.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported by {sorted(files)}): no installed distribution provides it")
        elif not dists & declared:
            problems.append(
                f"{module} (imported by {sorted(files)}): provided by {sorted(dists)}, which pyproject.toml "
                "does not declare"
            )
    if problems:
        pytest.fail("undeclared imports:\n" + "\n".join(problems))


def test_the_conda_environment_pins_what_pyproject_declares():
    """Rules run in envs/resurgence.yaml under `--software-deployment-method conda`: the same pins."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "envs" / "resurgence.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = {r.replace(" ", "") for r in pip if not r.startswith("-e")}
    assert pinned == {r.replace(" ", "") for r in project["dependencies"]}


def resurgence_imports(path: Path) -> set[str]:
    """The project modules one file imports (``resurgence.x.y``), at module level or inside functions."""
    names = set()
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "resurgence" or node.module.startswith("resurgence."):
                for alias in node.names:  # `from package import module` names the module
                    sub = f"{node.module}.{alias.name}"
                    is_module = (ROOT / (sub.replace(".", "/") + ".py")).is_file()
                    names.add(sub if is_module else node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("resurgence.")}
    return names


# Who may import whom: the evaluators import their interface and never the registry that builds them (no
# import loop); the world protocol and the model wrappers, which the SD presets share, import nothing of the
# toy world (the world's factory, `get_world`, alone names it, inside the function).
LAYERS = {
    "resurgence/evaluate/base.py": set(),
    "resurgence/evaluate/identity.py": {"resurgence.evaluate.base"},
    "resurgence/evaluate/clip_metrics.py": {"resurgence.evaluate.base", "resurgence.models.clip"},
    "resurgence/evaluate/celebrity.py": {
        "resurgence.evaluate.base",
        "resurgence.evaluate.identity",
        "resurgence.evaluate.gcd_worker",
        "resurgence.models.availability",
        "resurgence.models.clip",
    },
    "resurgence/evaluate/gcd_worker.py": set(),
}


@pytest.mark.parametrize("path", sorted(LAYERS))
def test_evaluators_import_only_what_is_below_them(path):
    extra = resurgence_imports(ROOT / path) - LAYERS[path]
    assert not extra, f"{path} imports {sorted(extra)}"


def test_world_protocol_and_models_import_no_toy_world_at_module_level():
    for path in [ROOT / "resurgence" / "world.py", *sorted((ROOT / "resurgence" / "models").glob("*.py"))]:
        tree = ast.parse(path.read_text())
        top = {
            node.module
            for node in tree.body
            if isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("resurgence.toyworld")
        }
        assert not top, f"{path.relative_to(ROOT)} imports {sorted(top)}"
