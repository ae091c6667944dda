"""Helpers of the benchmark scripts (benchmarks/common.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import inductor_settings  # noqa: E402  (benchmarks/ is a script folder)


def test_inductor_settings_patch_only_inside_and_name_bad_keys():
    import torch._inductor.config as inductor_config

    before = (inductor_config.layout_optimization, inductor_config.conv_1x1_as_mm)
    with inductor_settings([f"layout_optimization={not before[0]}", f"conv_1x1_as_mm={not before[1]}"]):
        assert (inductor_config.layout_optimization, inductor_config.conv_1x1_as_mm) == (not before[0], not before[1])
    assert (inductor_config.layout_optimization, inductor_config.conv_1x1_as_mm) == before
    for bad in ("no_such_setting=1", "layout_optimization"):
        with pytest.raises(SystemExit, match="key=value"):
            inductor_settings([bad])
