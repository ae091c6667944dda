"""The artifact layout: one module names every path; rules, stages and figures ask it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from resurgence import layout

ROOT = Path(__file__).resolve().parents[1]
STATES = ["base", "default/erased", "lambda1_0.001/tercile_2/full/step-150"]


def test_patterns_and_paths_agree():
    """A rule's pattern, filled by Snakemake, is the path the stages and figures compute."""
    names = dict(task="identity_10", erase="default", ftset="random_identity", ftmethod="lora")
    fns = (
        layout.erased_lora,
        layout.erase_report,
        layout.train_log,
        layout.reversion_csv,
        layout.finetune_dir,
    )
    for fn in fns:
        n = fn.__code__.co_argcount
        keys = list(names)[:n]
        pattern = fn(*(f"{{{k}}}" for k in keys))
        assert pattern.format(**names) == fn(*(names[k] for k in keys))
    for state in STATES:
        assert layout.images_index("{task}", "{state}").format(task="t", state=state) == layout.images_index(
            "t", state
        )


@pytest.mark.parametrize("state", STATES)
def test_images_label_inverts_images_dir(state):
    assert layout.images_label(layout.images_grid("object_ship", state)) == f"object_ship/{state}"
    # an unpacked copy elsewhere, and a task named like a folder of the layout
    assert layout.images_label(f"/tmp/x/{layout.images_index('images', state)}") == f"images/{state}"


def test_images_label_refuses_other_paths():
    for path in ("results/metrics/t/base/tidy.csv", "results/images/t/nonsense/grid.png", "grid.png"):
        with pytest.raises(ValueError, match="images folder"):
            layout.images_label(path)


def test_state_ids_round_trip():
    assert layout.parse_state("t", layout.state_id("base"))["state"] == "base"
    erased = layout.parse_state("t", layout.state_id("erased", "uce"))
    assert (erased["erase"], erased["state"]) == ("uce", "erased")
    ft = layout.parse_state("t", layout.state_id("finetuned", "uce", "random_object", "full", 40))
    assert (ft["ftset"], ft["ftmethod"], ft["step"]) == ("random_object", "full", 40)
    for state in STATES:
        assert re.fullmatch(layout.STATE_PATTERN, state)


def test_checkpoint_names_round_trip(tmp_path):
    path = layout.checkpoint_path(tmp_path, 150)
    assert path.parent == tmp_path / layout.CHECKPOINTS
    assert layout.checkpoint_step(path.name) == 150
    assert layout.checkpoint_step(layout.FINAL) is None
    assert layout.checkpoint_step("step-12") is None  # a short name is not a kept checkpoint


def test_rules_spell_no_artifact_path():
    """Every path in the rules comes from `resurgence.layout`: a literal would be a second source."""
    sources = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    literal = re.compile(rf"[\"'](?:{layout.RESULTS}|{layout.LOGS})/")
    found = [
        f"{p.name}:{i}"
        for p in sources
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert not found, f"artifact paths spelled outside resurgence.layout: {found}"
