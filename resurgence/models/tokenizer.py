"""Offline CLIP tokenizers.

SD v1.4's tokenizer is OpenAI CLIP's byte-level BPE. open_clip ships that exact BPE table
(`bpe_simple_vocab_16e6.txt.gz`), so we can write the `vocab.json`/`merges.txt` pair that
`transformers.CLIPTokenizer` reads without touching the Hugging Face hub.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

from resurgence.io import atomic_path


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> unicode map (same construction as open_clip and transformers)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def openai_clip_vocab() -> tuple[dict[str, int], list[str]]:
    """The 49408-token OpenAI CLIP vocabulary and its merges, read from open_clip's bundled table."""
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write_clip_tokenizer(
    out_dir: str | os.PathLike,
    vocab: dict[str, int] | None = None,
    merges: list[str] | None = None,
    model_max_length: int = 77,
    pad_token: str = "<|endoftext|>",
) -> CLIPTokenizer:
    """Write a `CLIPTokenizer` folder (vocab.json, merges.txt, configs) and load it back offline.

    Without ``vocab``/``merges`` this writes OpenAI CLIP's tokenizer (the one SD v1.4 uses; SD v2.x
    pads with "!" instead of <eos>, its tokenizer config's ``pad_token``).
    """
    if vocab is None or merges is None:
        vocab, merges = openai_clip_vocab()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "vocab.json") as tmp:
        tmp.write_text(json.dumps(vocab, ensure_ascii=False))
    with atomic_path(out / "merges.txt") as tmp:
        tmp.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(
        vocab=dict(vocab),
        merges=[tuple(m.split()) for m in merges],
        model_max_length=model_max_length,
        pad_token=pad_token,
    )
    tok.save_pretrained(str(out))
    return CLIPTokenizer.from_pretrained(str(out), local_files_only=True)


def openai_clip_tokenizer(
    model_max_length: int = 77, out_dir: str | os.PathLike | None = None, pad_token: str = "<|endoftext|>"
) -> CLIPTokenizer:
    """OpenAI CLIP's tokenizer, written to ``out_dir`` and loaded offline; without ``out_dir`` through a
    folder that is removed again (the loaded tokenizer lives in memory)."""
    if out_dir is not None:
        return write_clip_tokenizer(out_dir, model_max_length=model_max_length, pad_token=pad_token)
    with tempfile.TemporaryDirectory(prefix="clip-tokenizer-") as tmp:
        return write_clip_tokenizer(tmp, model_max_length=model_max_length, pad_token=pad_token)
