"""Atomic writes: nothing half-written is left where an artifact is expected."""

from __future__ import annotations

import os

import pytest

from resurgence.io import atomic_path, read_json, write_json


def test_failed_write_leaves_no_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_directory_is_swapped_in_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "new.bin").write_text("new")
        assert (target / "old.bin").exists()  # the old artifact stays until the new one is complete
    assert sorted(p.name for p in target.iterdir()) == ["new.bin"]


def test_artifacts_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_path(tmp_path / "d", is_dir=True) as tmp:
            (tmp / "f").write_text("1")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert read_json(tmp_path / "a.json") == {"x": 1}
