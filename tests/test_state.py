"""Keys of resumable state: content digests, key differences, and discarding state of another key."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest

from resurgence import state


@pytest.fixture
def memo_everything(tmp_path, monkeypatch):
    """Memoise every file's digest, in a cache of the test's own."""
    monkeypatch.setenv(state.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(state, "MEMO_MIN_BYTES", 0)
    return tmp_path / "cache" / "digests"


def test_file_digest_is_sha256_of_its_bytes(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights" * 1000)
    assert state.content_digest(f) == hashlib.sha256(b"weights" * 1000).hexdigest()


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def test_safetensors_digest_ignores_the_header_key_order_and_nothing_else(tmp_path):
    """The safetensors writer orders metadata differently from process to process: two writes of the same
    tensors and metadata must key alike, any change of a tensor or a metadata value must not."""
    meta = {"format": "pt", "producer": "resurgence.uce", "note": "n"}
    tensor = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    data = bytes(range(8))
    files = {
        "a": _safetensors_bytes({"__metadata__": meta, "w": tensor}, data),
        "b": _safetensors_bytes({"w": tensor, "__metadata__": dict(reversed(list(meta.items())))}, data),
        "value": _safetensors_bytes({"__metadata__": {**meta, "note": "m"}, "w": tensor}, data),
        "tensor": _safetensors_bytes({"__metadata__": meta, "w": tensor}, bytes(range(1, 9))),
    }
    digests = {}
    for name, raw in files.items():
        (tmp_path / f"{name}.safetensors").write_bytes(raw)
        digests[name] = state.content_digest(tmp_path / f"{name}.safetensors")
    assert files["a"] != files["b"] and digests["a"] == digests["b"]
    assert len({digests["a"], digests["value"], digests["tensor"]}) == 3


def test_folder_digest_covers_names_and_bytes_but_not_hidden_or_ignored_files(tmp_path):
    d = tmp_path / "set"
    (d / "images").mkdir(parents=True)
    (d / "images" / "0.png").write_bytes(b"a")
    (d / "manifest.json").write_text("{}")
    key = state.content_digest(d)
    want = hashlib.sha256()
    for rel, data in (("images/0.png", b"a"), ("manifest.json", b"{}")):
        want.update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    assert key == want.hexdigest()
    (d / ".writer.lock").write_text("PID 1")
    (d / "images" / ".0.png.x.tmp").write_bytes(b"half")
    (d / "state.pt").write_bytes(b"optimizer")
    assert state.content_digest(d, ignore=("state.pt",)) == key
    assert state.content_digest(d) != key
    (d / "images" / "0.png").rename(d / "images" / "1.png")  # same bytes, another image
    assert state.content_digest(d, ignore=("state.pt",)) != key
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        state.content_digest(tmp_path / "absent")


def test_memoised_digest_is_recomputed_after_any_rewrite(tmp_path, memo_everything):
    f = tmp_path / "unet.safetensors"
    f.write_bytes(b"1234")
    first = state.content_digest(f)
    assert len(list(memo_everything.iterdir())) == 1
    assert state.content_digest(f) == first
    st = f.stat()
    with open(f, "r+b") as fh:  # rewritten in place: same size, same inode, mtime set back
        fh.write(b"5678")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert state.content_digest(f) == hashlib.sha256(b"5678").hexdigest() != first


def test_a_poisoned_memo_is_what_the_memo_returns(tmp_path, memo_everything):
    """The memo is really consulted (so the rewrite test above exercises its invalidation)."""
    f = tmp_path / "unet.safetensors"
    f.write_bytes(b"1234")
    state.content_digest(f)
    (memo := next(memo_everything.iterdir())).write_text("feed")
    assert state.content_digest(f) == "feed"
    memo.unlink()
    assert state.content_digest(f) == hashlib.sha256(b"1234").hexdigest()


def test_key_differences_name_the_dotted_paths():
    old = {
        "config": {"learning_rate": 1e-4, "rank": 4, "target_modules": ["to_k"]},
        "model": "a",
        "data": "x",
    }
    new = {"config": {"learning_rate": 3e-4, "rank": 4, "target_modules": ["to_k", "to_v"]}, "model": "a"}
    assert state.key_differences(old, new) == ["config.learning_rate", "config.target_modules", "data"]
    assert state.key_differences(old, old) == []


def test_claim_keeps_state_of_the_same_key_only(tmp_path, caplog):
    d = tmp_path / "checkpoints"
    key = {"config": {"lr": 1e-4, "modules": ("to_k", "to_v")}, "model": "erased v1"}
    assert state.claim_state_dir(d, key) is False
    (d / "step-000002").mkdir()
    assert state.claim_state_dir(d, key) is True and (d / "step-000002").is_dir()  # tuples stored as lists
    with caplog.at_level(logging.WARNING):
        assert state.claim_state_dir(d, {**key, "model": "erased v2"}, what="fine-tune checkpoints") is False
    assert not (d / "step-000002").exists()
    assert "discarding stale fine-tune checkpoints" in caplog.text and "['model']" in caplog.text
    assert json.loads((d / state.KEY_FILE).read_text())["model"] == "erased v2"


def test_claim_discards_state_that_records_no_key(tmp_path, caplog):
    d = tmp_path / "checkpoints"
    (d / "step-000002").mkdir(parents=True)
    with caplog.at_level(logging.WARNING):
        assert state.claim_state_dir(d, {"model": "m"}) is False
    assert not (d / "step-000002").exists() and "records no key" in caplog.text
