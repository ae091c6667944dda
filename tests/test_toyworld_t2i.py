"""The toy world's miniature SD: real-size shapes, a micro training run, checkpoint/resume, offline reload."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from resurgence.models.pipeline import ARCHITECTURES, TINY, TOY, load_pipeline
from resurgence.toyworld.t2i import (
    T2ITrainConfig,
    build_toy_pipeline,
    build_toy_tokenizer,
    count_parameters,
    knowledge_loss,
    knowledge_spans,
    train_text_to_image,
    world_words,
)
from resurgence.world import Concept

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("square", "stripe")
RGB = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (240, 220, 30)}


class FakeWorld:
    """The slice of the ToyWorld contract the trainer uses: concepts, captions, eval prompts."""

    def __init__(self) -> None:
        self.identities = [Concept("Orla Vantreck", "identity"), Concept("Kadan Quilmoor", "identity")]
        self.objects = [Concept(s, "object", synonyms=(f"{s}s",)) for s in SHAPES]

    def eval_prompts(self, c: Concept) -> list[str]:
        if c.domain == "identity":
            return [f"A portrait of {c.name}", f"An oil painting of {c.name}"]
        return [f"a photo of the {n}" for n in c.names]

    def training_caption(self, rng: np.random.Generator) -> tuple[str, None]:
        return f"a {COLOURS[rng.integers(4)]} {SHAPES[rng.integers(2)]}", None

    def free_captions(self, n: int, seed: int) -> list[str]:
        return ["a red square next to a blue stripe"] * n


def fake_data(n: int, size: int, seed: int = 0) -> dict:
    """Captioned images whose content depends on the caption (colour, shape) plus noise."""
    rng = np.random.default_rng(seed)
    images = np.full((n, size, size, 3), 128, np.uint8)
    captions = []
    for i in range(n):
        c, s = COLOURS[rng.integers(4)], SHAPES[rng.integers(2)]
        captions.append(f"a {c} {s}")
        if s == "square":
            images[i, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = RGB[c]
        else:
            images[i, :, size // 3 : 2 * size // 3] = RGB[c]
    images = np.clip(images + rng.integers(-8, 9, images.shape), 0, 255).astype(np.uint8)
    return dict(images=images, captions=captions)


# TINY with narrower layers and 16 tokens: the same classes, a few hundred kB.
MICRO = dataclasses.replace(
    TINY,
    unet={**TINY.unet, "block_out_channels": (16, 32), "attention_head_dim": 2},
    vae={**TINY.vae, "block_out_channels": (8, 16), "norm_num_groups": 4},
    text={**TINY.text, "num_attention_heads": 2, "max_position_embeddings": 16},
    tokenizer_max_length=16,
)


def micro_cfg(**kw) -> T2ITrainConfig:
    base = dict(
        seed=0,
        n_train_images=64,
        tokenizer_captions=50,
        vae_steps=15,
        vae_batch_size=16,
        vae_lr=2e-3,
        unet_steps=40,
        unet_batch_size=32,
        unet_lr=2e-3,
        text_lr=1e-3,
        warmup_steps=2,
        ema_decay=0.9,
        checkpoint_every=10,
        log_every=5,
        n_samples=2,
        compile=False,
        unet_time_budget_s=None,
    )
    return T2ITrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("t2i")
    metrics = train_text_to_image(
        micro_cfg(), FakeWorld(), out, device="cpu", arch=MICRO, data=fake_data(64, 16)
    )
    return out, metrics


def test_toy_architecture_is_registered_and_runs_at_real_size(tmp_path):
    assert ARCHITECTURES["toy"] is TOY
    tok = build_toy_tokenizer(world_words(FakeWorld(), 50), tmp_path / "tok", TOY.tokenizer_max_length)
    pipe = build_toy_pipeline(TOY, tmp_path / "tok", seed=0)
    pipe.set_progress_bar_config(disable=True)
    n = count_parameters(pipe)
    assert n["unet"] < 5e6 and n["vae"] < 4e6 and n["text_encoder"] < 8e6
    assert pipe.text_encoder.config.vocab_size == len(tok) < 2000
    with torch.no_grad():
        x = torch.rand(2, 3, 64, 64) * 2 - 1
        z = pipe.vae.encode(x).latent_dist.mean
        assert z.shape == (2, 4, 16, 16)
        assert pipe.vae.decode(z).sample.shape == (2, 3, 64, 64)
        ids = tok(["A portrait of Orla Vantreck"] * 2, padding="max_length", return_tensors="pt").input_ids
        assert ids.shape == (2, TOY.tokenizer_max_length)
        emb = pipe.text_encoder(ids)[0]
        assert emb.shape == (2, TOY.tokenizer_max_length, TOY.unet["cross_attention_dim"])
        eps = pipe.unet(z, torch.tensor([10, 900]), encoder_hidden_states=emb).sample
        assert eps.shape == z.shape and eps.dtype == torch.float32
    # MACE edits cross-attention K/V at several resolutions.
    kv = [k for k, _ in pipe.unet.named_modules() if k.endswith("attn2.to_k")]
    assert {k.split(".")[0] for k in kv} == {"down_blocks", "mid_block", "up_blocks"}
    img = pipe(
        ["a red square", "A portrait of Orla Vantreck"], num_inference_steps=2, output_type="np"
    ).images
    assert img.shape == (2, 64, 64, 3)


def test_tokenizer_makes_every_world_word_one_token_and_round_trips(tmp_path):
    world = FakeWorld()
    tok = build_toy_tokenizer(world_words(world, 50), tmp_path / "tok", 16)
    for text in (
        "A portrait of Orla Vantreck",
        "a photo of the stripes",
        "a yellow square next to a blue stripe",
    ):
        pieces = tok.tokenize(text)
        assert len(pieces) == len(text.split())
        assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text.lower()
    # Unknown words still tokenize (byte-level fallback) and round-trip.
    assert tok.decode(tok("zebra quux").input_ids, skip_special_tokens=True) == "zebra quux"
    ids = tok("").input_ids
    assert ids == [tok.bos_token_id, tok.eos_token_id]


def test_micro_training_lowers_losses_and_saves_loadable_pipeline(trained):
    out, m = trained
    vae_l = [v for _, v in m["vae"]["losses"]]
    unet_l = [v for _, v in m["unet"]["losses"]]
    assert vae_l[-1] < vae_l[0]
    assert np.mean(unet_l[-2:]) < 0.8 * unet_l[0]
    assert m["unet"]["finished"] and m["unet"]["resumed_from"] == 0
    assert 0.01 < m["scaling_factor"] < 100 and abs(m["latent_std"] - 1) < 0.2
    saved = json.loads((out / "t2i_train.json").read_text())
    assert saved["seed"] == 0 and saved["config"]["unet_steps"] == 40 and saved["device"] == "cpu"
    assert (out / "t2i_samples.png").exists()
    pipe = load_pipeline(out / "t2i", device="cpu")
    assert pipe.scheduler.__class__.__name__ == "DDIMScheduler" and pipe.safety_checker is None
    assert pipe.vae.config.scaling_factor == pytest.approx(m["scaling_factor"])
    assert pipe.unet.dtype == torch.float32
    g = torch.Generator().manual_seed(0)
    img = pipe(["a red square"], num_inference_steps=3, generator=g, output_type="np").images
    assert img.shape == (1, 16, 16, 3) and np.isfinite(img).all()


def test_checkpoint_resume_reproduces_an_uninterrupted_run(trained, tmp_path):
    ref, _ = trained
    data = fake_data(64, 16)
    part = train_text_to_image(
        micro_cfg(stop_at_unet_step=20), FakeWorld(), tmp_path, device="cpu", arch=MICRO, data=data
    )
    assert not part["unet"]["finished"] and not (tmp_path / "t2i").exists()
    assert (tmp_path / "checkpoints" / "unet-0000020.pt").exists()
    full = train_text_to_image(micro_cfg(), FakeWorld(), tmp_path, device="cpu", arch=MICRO, data=data)
    assert full["vae"].get("skipped") and full["unet"]["resumed_from"] == 20
    assert full["unet"]["losses"][:4] == part["unet"]["losses"]
    for sub in ("unet", "text_encoder", "vae"):
        a = load_file(next((ref / "t2i" / sub).glob("*.safetensors")))
        b = load_file(next((tmp_path / "t2i" / sub).glob("*.safetensors")))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), sub


def test_config_is_plain_data():
    cfg = dataclasses.asdict(T2ITrainConfig())
    assert cfg["caption_dropout"] == 0.1 and cfg["mixed_precision"] == "auto"
    # JSON gives tuples back as lists (the resume key is compared as JSON gives it back: state.claim_state_dir)
    assert json.loads(json.dumps(cfg)) == {**cfg, "exclude": list(cfg["exclude"])}


def test_time_budget_fixes_the_step_count_after_probing_and_records_it(tmp_path, monkeypatch):
    import resurgence.toyworld.t2i as t2i

    clock = iter(range(0, 10**6))  # a fake clock: every reading advances one second
    monkeypatch.setattr(t2i.time, "perf_counter", lambda: float(next(clock)))
    cfg = micro_cfg(unet_steps=10_000, warmup_steps=20, probe_steps=12, unet_time_budget_s=40.0, n_samples=0)
    m = train_text_to_image(cfg, FakeWorld(), tmp_path, device="cpu", arch=MICRO, data=fake_data(64, 16))
    planned = m["unet"]["steps"]
    # probed at one clock tick per step, the budget leaves room for a few dozen steps, not 10 000
    assert 12 < planned < 60 and m["unet"]["finished"]
    assert m["unet"]["losses"][-1][0] == planned
    saved = json.loads((tmp_path / "t2i_train.json").read_text())
    assert saved["unet"]["steps"] == planned


def test_time_budget_needs_the_probe_inside_the_warmup():
    with pytest.raises(ValueError, match="probe_steps"):
        micro_cfg(unet_time_budget_s=10.0, probe_steps=15, warmup_steps=2)
    assert micro_cfg(unet_time_budget_s=None, probe_steps=15, warmup_steps=2).probe_steps == 15


def test_compile_failure_falls_back_to_eager_training(tmp_path, monkeypatch):
    import resurgence.toyworld.t2i as t2i

    def broken(module, mode):
        def fail(*a, **k):
            raise RuntimeError("inductor exploded")

        return fail

    monkeypatch.setattr(t2i, "_compiled", broken)
    with pytest.warns(UserWarning, match="inductor exploded"):
        m = train_text_to_image(
            micro_cfg(compile=True, unet_steps=6, n_samples=0),
            FakeWorld(),
            tmp_path,
            device="cpu",
            arch=MICRO,
            data=fake_data(64, 16),
        )
    assert m["unet"]["finished"] and m["unet"]["compiled"] is False


# ------------------------------------------------------------------ name knowledge


def test_knowledge_spans_find_the_one_named_identity_and_where_its_name_starts():
    names = [[5, 6], [5, 7], [9]]
    captions = [
        [1, 5, 6, 2, 0],  # name 0 at 1
        [1, 3, 5, 7, 0],  # name 1 at 2 (shares its first token with name 0)
        [1, 9, 2, 5, 6],  # two different names: no knowledge
        [1, 5, 2, 6, 0],  # tokens of a name, not in sequence: none
        [1, 9, 4, 9, 0],  # one name twice: its first occurrence
    ]
    index, start = knowledge_spans(captions, names)
    assert index.tolist() == [0, 1, -1, -1, 2]
    assert start.tolist() == [1, 2, 5, 5, 1]
    with pytest.raises(ValueError, match="no tokens"):
        knowledge_spans(captions, [[5], []])


def test_knowledge_spans_count_a_name_and_its_synonyms_as_one_concept():
    names = [[5, 6], [6], [9]]  # "oak tree", its synonym "oak" (here the token 6), another concept
    groups = [0, 0, 1]
    captions = [
        [1, 5, 6, 0],  # the name and, inside it, the synonym: one concept, from the name's start
        [1, 3, 6, 0],  # the synonym alone
        [1, 6, 2, 9],  # two concepts: none
    ]
    index, start = knowledge_spans(captions, names, groups)
    assert index.tolist() == [0, 0, -1]
    assert start.tolist() == [1, 2, 4]
    without = knowledge_spans(captions, names)[0]  # every name its own concept: the first caption names two
    assert without.tolist() == [-1, 1, -1]
    with pytest.raises(ValueError, match="3 names but 2 groups"):
        knowledge_spans(captions, names, [0, 1])


def test_knowledge_loss_matches_a_direct_loop():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 6, 8, generator=g)
    probe = torch.nn.Linear(8, 5, bias=False)
    targets = torch.nn.functional.normalize(torch.randn(3, 5, generator=g), dim=1)
    index, start = torch.tensor([0, -1, 2, 1]), torch.tensor([2, 0, 5, 6])
    got = knowledge_loss(hidden, probe, targets, index, start)
    terms = []
    for b in range(4):
        for p in range(6):
            if index[b] >= 0 and p >= start[b]:
                z = probe(hidden[b, p])
                terms.append(1 - torch.dot(z, targets[index[b]]) / (z.norm() * targets[index[b]].norm()))
    assert len(terms) == 4 + 1  # caption 0: positions 2..5; caption 2: position 5; caption 3: none
    assert got.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    # no caption names an identity: zero, not NaN
    assert knowledge_loss(hidden, probe, targets, torch.full((4,), -1), start).item() == 0.0


def named_data(n: int, size: int, seed: int = 0) -> dict:
    """`fake_data` where every other caption is a portrait of one of FakeWorld's identities."""
    data = fake_data(n, size, seed)
    names = [c.name for c in FakeWorld().identities]
    for i in range(0, n, 2):
        data["captions"][i] = f"A portrait of {names[(i // 2) % 2]}"
    for i in range(1, n, 4):  # a quarter name nothing the world knows
        data["captions"][i] = "a blank canvas"
    return data


def test_knowledge_loss_trains_the_text_encoder_and_resumes_exactly(tmp_path):
    torch.set_num_threads(2)
    data = named_data(64, 16)
    cfg = micro_cfg(knowledge_weight=1.0, n_samples=0, unet_steps=60)
    ref = train_text_to_image(cfg, FakeWorld(), tmp_path / "ref", device="cpu", arch=MICRO, data=data)
    k = [v for _, v in ref["unet"]["knowledge_losses"]]
    assert len(k) == 12 and k[-1] < 0.5 * k[0]
    # identities' portraits and the shapes (objects) carry knowledge; the blank canvases do not
    assert ref["knowledge_captions_frac"] == pytest.approx(0.75)
    part = train_text_to_image(
        micro_cfg(knowledge_weight=1.0, n_samples=0, unet_steps=60, stop_at_unet_step=30),
        FakeWorld(),
        tmp_path / "res",
        device="cpu",
        arch=MICRO,
        data=data,
    )
    assert not part["unet"]["finished"]
    full = train_text_to_image(cfg, FakeWorld(), tmp_path / "res", device="cpu", arch=MICRO, data=data)
    assert full["unet"]["resumed_from"] == 30
    assert full["unet"]["knowledge_losses"] == ref["unet"]["knowledge_losses"]
    a = load_file(tmp_path / "ref" / "t2i" / "text_encoder" / "model.safetensors")
    b = load_file(tmp_path / "res" / "t2i" / "text_encoder" / "model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_without_knowledge_weight_or_named_captions_there_is_no_probe(trained, tmp_path):
    _, m = trained  # every fake_data caption names a shape, one of FakeWorld's objects
    assert m["knowledge_captions_frac"] == 1.0 and len(m["unet"]["knowledge_losses"]) == 8
    torch.set_num_threads(2)
    quick = dict(n_samples=0, unet_steps=10, vae_steps=5)
    off = train_text_to_image(
        micro_cfg(knowledge_weight=0.0, **quick),
        FakeWorld(),
        tmp_path / "off",
        device="cpu",
        arch=MICRO,
        data=fake_data(64, 16),
    )
    blank = fake_data(64, 16)
    blank["captions"] = ["a blank canvas"] * 64
    unnamed = train_text_to_image(
        micro_cfg(**quick), FakeWorld(), tmp_path / "blank", device="cpu", arch=MICRO, data=blank
    )
    for m in (off, unnamed):
        assert m["unet"]["knowledge_losses"] == [] and "knowledge_captions_frac" not in m
