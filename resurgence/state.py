"""What a piece of resumable state was made from, so that a rerun never resumes from another run's state.

Training checkpoints (fine-tuning, the toy world's trainers) live beside a job's declared outputs,
where Snakemake neither declares nor clears them. Each checkpoint folder therefore carries a key:
the full training config (less the fields a resumed run may change) and the content digests of
its inputs. A job resumes only under an identical key; any other state is discarded, and the job
log says which parts of the key differ.

Content digests are sha256 over file bytes; a safetensors file's header is taken with its keys sorted, since
the safetensors writer orders the metadata differently from process to process (two writes of the same
tensors and metadata differ in bytes). Digests of large files (Stable Diffusion's weights)
are memoised per machine under the file's (path, size, inode, mtime, ctime): ctime changes with
every write and cannot be set back, so a rewritten file is always hashed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from resurgence.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

KEY_FILE = "resume_key.json"
CACHE_ENV = "RESURGENCE_CACHE"
# Files at least this large have their digest memoised (smaller ones hash faster than a lookup).
MEMO_MIN_BYTES = 16 << 20


def cache_dir() -> Path:
    """This machine's cache of the package (``$RESURGENCE_CACHE``, else the XDG cache folder)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resurgence"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def safetensors_sha256(path: str | os.PathLike) -> str:
    """sha256 of a safetensors file with its JSON header's keys sorted (metadata order is not content)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        try:
            if size > os.fstat(f.fileno()).st_size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(size))
        except ValueError:  # not a safetensors file after all: its bytes, as any other file's
            return file_sha256(path)
        h.update(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_of(path: Path) -> str:
    return safetensors_sha256(path) if path.suffix == ".safetensors" else file_sha256(path)


def _memo_path(path: Path) -> Path:
    real = path.resolve()
    st = real.stat()
    stamp = (
        f"{real}\0{st.st_size}\0{st.st_dev}\0{st.st_ino}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0sorted-header"
    )
    return cache_dir() / "digests" / hashlib.sha256(stamp.encode()).hexdigest()


def _file_digest(path: Path) -> str:
    if path.stat().st_size < MEMO_MIN_BYTES:
        return _sha256_of(path)
    memo = _memo_path(path)
    if memo.is_file():
        return memo.read_text().strip()
    digest = _sha256_of(path)
    try:
        with atomic_path(memo) as tmp:
            tmp.write_text(digest)
    except OSError:  # a read-only cache costs only the next job's hashing
        pass
    return digest


def content_digest(path: str | os.PathLike, ignore: Iterable[str] = ()) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative paths and bytes; hidden files and
    names in ``ignore`` left out, so lock files and training state do not count)."""
    p = Path(path)
    if p.is_file():
        return _file_digest(p)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or folder to key")
    skip = set(ignore)
    h = hashlib.sha256()
    for f in sorted(p.rglob("*")):
        rel = f.relative_to(p)
        if any(part.startswith(".") or part in skip for part in rel.parts) or not f.is_file():
            continue
        h.update(f"{rel.as_posix()}\0{_file_digest(f)}\n".encode())
    return h.hexdigest()


def config_key(cfg: Any, free: Iterable[str] = ()) -> dict[str, Any]:
    """A training config dataclass as a key: every field but the ``free`` ones (those a resumed run
    may change without changing what it computes, e.g. how often it checkpoints)."""
    skip = set(free)
    return {k: v for k, v in asdict(cfg).items() if k not in skip}


def key_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths at which two keys differ (mappings are compared entry by entry)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append(path)
            else:
                out += key_differences(old[k], new[k], path)
        return out
    return [] if old == new else [prefix or "<key>"]


def _canonical(key: Mapping[str, Any]) -> Any:
    """The key as JSON would give it back (tuples as lists), so a stored key compares equal."""
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def claim_state_dir(state_dir: str | os.PathLike, key: Mapping[str, Any], what: str = "state") -> bool:
    """Make ``state_dir`` hold state made under ``key`` only.

    Keeps the folder when its key file equals ``key``; otherwise deletes it (logging which parts
    of the key differ) and starts it anew with ``key``. Returns whether earlier state was kept.
    """
    folder = Path(state_dir)
    new = _canonical(key)
    stored = folder / KEY_FILE
    if stored.is_file():
        old = read_json(stored)
        if old == new:
            return True
        log.warning(
            "discarding stale %s in %s: made under another key (differs in %s); starting fresh",
            what,
            folder,
            key_differences(old, new),
        )
        shutil.rmtree(folder)
    elif folder.is_dir() and any(folder.iterdir()):
        log.warning(
            "discarding %s in %s: it records no key of what it was made from; starting fresh", what, folder
        )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(stored, new)
    return False
