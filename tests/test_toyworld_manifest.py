"""The shipped-weights manifest: provenance per model, sha256 per file, and importing GPU-trained models."""

import json

import pytest

from resurgence.toyworld.train import (
    choose_clip_knowledge_weight,
    import_models,
    record_model,
    verify_manifest,
)


def _fake_model(root, name, payload: bytes, metrics):
    (root / name).mkdir(parents=True)
    (root / name / "weights.bin").write_bytes(payload)
    record_model(root, name, {"seed": 3}, metrics, "gpu", "cuda", 12.3, gpu="FakeGPU", host="gpu-host")


def test_import_replaces_a_model_and_keeps_the_others(tmp_path):
    dst, src = tmp_path / "shipped", tmp_path / "trained"
    _fake_model(dst, "clip", b"old clip", {"acc": 0.9})
    _fake_model(dst, "t2i", b"old t2i", {"acc": 0.1})
    (dst / "t2i" / "stale.bin").write_bytes(b"left from an older model")
    _fake_model(src, "t2i", b"new t2i", {"acc": 0.95})

    assert import_models(src, dst) == ["t2i"]
    m = json.loads((dst / "manifest.json").read_text())
    assert m["models"]["t2i"]["metrics"] == {"acc": 0.95} and m["models"]["t2i"]["gpu"] == "FakeGPU"
    assert m["models"]["clip"]["metrics"] == {"acc": 0.9}
    assert (dst / "t2i" / "weights.bin").read_bytes() == b"new t2i"
    assert not (dst / "t2i" / "stale.bin").exists() and "t2i/stale.bin" not in m["files"]
    assert verify_manifest(dst) == []
    (dst / "clip" / "weights.bin").write_bytes(b"tampered")
    assert verify_manifest(dst) == ["clip/weights.bin"]


def test_import_of_an_untrained_model_names_it(tmp_path):
    _fake_model(tmp_path / "trained", "clip", b"x", {})
    with pytest.raises(FileNotFoundError, match="detector"):
        import_models(tmp_path / "trained", tmp_path / "shipped", ["detector"])


def _clip_run(identity_inside: bool, object_inside: bool, zero_shot: float) -> dict:
    geometry = {
        "identity": {"inside_paper_range": identity_inside},
        "object": {"inside_paper_range": object_inside},
    }
    metrics = {"identity_zero_shot_top1": zero_shot, "object_zero_shot_top1": 1.0}
    return {"geometry": {"clip": geometry}, "models": {"clip": {"metrics": metrics}}}


def test_the_smallest_gram_weight_inside_both_ranges_and_the_gate_is_chosen():
    runs = {
        1.0: _clip_run(True, False, 0.98),  # objects outside (the shipped world of 2026-12-02)
        30.0: _clip_run(True, True, 0.99),
        10.0: _clip_run(True, True, 0.90),  # inside, but CLIP's zero-shot falls below the gate
        3.0: _clip_run(False, True, 0.99),
    }
    assert choose_clip_knowledge_weight(runs, zero_shot_gate=0.95) == 30.0
    assert choose_clip_knowledge_weight(runs, zero_shot_gate=0.85) == 10.0
    assert choose_clip_knowledge_weight({1.0: runs[1.0], 3.0: runs[3.0]}, 0.95) is None
