"""Random-weight stand-ins of the sd14 world's models (tiny scale): written in the layouts the current
libraries save, accepted by the availability check, and loaded by the study's own loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resurgence.config import deep_merge, load_config
from resurgence.models import availability
from resurgence.models.clip import load_clip
from resurgence.models.pipeline import load_pipeline
from resurgence.models.segment import GroundedSAMSegmenter
from resurgence.models.standins import write_random_models

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    return root, write_random_models(root, ["ship", "boat", "oak tree"], scale="tiny", captions=12)


def test_standins_pass_the_availability_check(standins):
    _, overlay = standins
    config = deep_merge(load_config([ROOT / "config.yaml", ROOT / "config.sd14.yaml"]), overlay)
    assert availability.missing_models(config) == []
    availability.check_available(config)  # captions file included
    assert len(Path(overlay["evaluation"]["captions"]["file"]).read_text().splitlines()) == 12


def test_standins_load_through_the_study_loaders(standins):
    _, overlay = standins
    m = overlay["models"]
    pipe = load_pipeline(m["pipeline"])
    ids = pipe.tokenizer("a photo of a ship").input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and len(ids) > 3  # the CLIP BPE tokenizer, not a stub
    clip = load_clip(m["clip"])
    img = Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))
    assert clip.encode_images([img]).shape == (1, clip.embed_dim)
    assert clip.similarity(["ship"], ["boat", "oak tree"]).shape == (1, 2)
    seg = GroundedSAMSegmenter(
        m["segmenter"]["dino_id_or_path"], m["segmenter"]["sam_id_or_path"], box_threshold=0.0
    )
    masks = seg.segment([img], "ship")
    assert len(masks) == 1 and masks[0].shape == (32, 32)


def test_unknown_scale_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="scale must be one of"):
        write_random_models(tmp_path, ["ship"], scale="huge")
    assert not any(tmp_path.iterdir())  # rejected before anything is written


def test_random_pipeline_leaves_no_tokenizer_folder_and_saves_its_tokenizer(tmp_path, monkeypatch):
    """The OpenAI tokenizer is written to a temporary folder only to be loaded: nothing may stay behind
    (every benchmark and test build used to leave a folder in /tmp), and the pipeline must still save it."""
    import tempfile

    from resurgence.models.pipeline import build_random_pipeline

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    pipe = build_random_pipeline("tiny")
    assert list(scratch.iterdir()) == []
    pipe.save_pretrained(tmp_path / "saved")
    loaded = load_pipeline(tmp_path / "saved")
    prompt = ["A portrait of Person 3 in an official photo"]
    assert loaded.tokenizer(prompt).input_ids == pipe.tokenizer(prompt).input_ids
    assert len(loaded.tokenizer) == 49408
