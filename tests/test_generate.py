"""Generation engine and grids on the tiny random pipeline (CPU, seconds)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from resurgence.generate import engine
from resurgence.generate.engine import GenerationConfig, copy_from_pool, generate, generate_to_dir
from resurgence.generate.fp8 import FP8Conv2d, FP8Linear
from resurgence.generate.grid import make_grid, save_grid
from resurgence.models.pipeline import build_random_pipeline

CFG = GenerationConfig(steps=2, batch_size=2)


@pytest.fixture(scope="module")
def base_pipe():
    pipe = build_random_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture()
def pipe(base_pipe):
    return copy.deepcopy(base_pipe)


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_image_depends_only_on_prompt_and_seed_not_batch(pipe):
    prompts = ["a cat", "a dog", "a cow", "a dog", "a fish"]
    seeds = [1, 2, 3, 4, 5]
    batched = generate(pipe, prompts, seeds, CFG, progress=False)
    assert len(batched) == 5 and all(im.size == (16, 16) and im.mode == "RGB" for im in batched)
    # Same pairs, different batch neighbours and order: bitwise-identical images.
    alone = generate(pipe, ["a dog"], [2], CFG, progress=False)[0]
    shuffled = generate(pipe, ["a fish", "a cow", "a dog"], [5, 3, 2], CFG, progress=False)
    assert np.array_equal(_arr(alone), _arr(batched[1]))
    assert np.array_equal(_arr(shuffled[0]), _arr(batched[4]))
    assert np.array_equal(_arr(shuffled[1]), _arr(batched[2]))
    assert np.array_equal(_arr(shuffled[2]), _arr(batched[1]))
    # A different batch size may change float rounding, never the image beyond a quantisation step.
    big = generate(pipe, prompts, seeds, GenerationConfig(steps=2, batch_size=5), progress=False)
    assert max(np.abs(_arr(a) - _arr(b)).max() for a, b in zip(big, batched, strict=True)) <= 2
    # Unpadded small requests: same images as a batch of that size, never the padding's cost.
    small = generate(
        pipe,
        prompts[:1],
        seeds[:1],
        GenerationConfig(steps=2, batch_size=4),
        progress=False,
        pad_to_batch=False,
    )
    one = generate(pipe, prompts[:1], seeds[:1], GenerationConfig(steps=2, batch_size=1), progress=False)
    assert np.array_equal(_arr(small[0]), _arr(one[0]))


def test_seed_and_prompt_change_the_image(pipe):
    a, b, c = generate(pipe, ["a dog", "a dog", "a red car"], [2, 4, 2], CFG, progress=False)
    again = generate(pipe, ["a dog"], [2], CFG, progress=False)[0]
    assert np.array_equal(_arr(a), _arr(again))
    assert np.abs(_arr(a) - _arr(b)).mean() > 1.0  # other seed
    assert not np.array_equal(_arr(a), _arr(c))  # other prompt, same seed


@pytest.mark.parametrize("key, layer_type", [("linear_fp8", FP8Linear), ("conv_fp8", FP8Conv2d)])
def test_fp8_layers_draw_nearly_the_bf16_images_and_switch_back(pipe, key, layer_type):
    bf16 = GenerationConfig(steps=2, batch_size=2, dtype="bfloat16")
    prompts, seeds = ["a dog", "a red car"], [1, 2]
    keys = list(pipe.unet.state_dict())
    plain = generate(pipe, prompts, seeds, bf16, progress=False)
    fp8 = generate(pipe, prompts, seeds, GenerationConfig(**{**vars(bf16), key: "row"}), progress=False)
    assert sum(type(m) is layer_type for m in pipe.unet.modules()) > 0
    assert list(pipe.unet.state_dict()) == keys
    diffs = [np.abs(_arr(a) - _arr(b)).mean() for a, b in zip(plain, fp8, strict=True)]
    assert all(0 < d < 8 for d in diffs)  # rounding, not another image (another seed: ~40 here)
    again = generate(pipe, prompts, seeds, bf16, progress=False)
    assert not any(type(m) is layer_type for m in pipe.unet.modules())
    assert all(np.array_equal(_arr(a), _arr(b)) for a, b in zip(plain, again, strict=True))
    with pytest.raises(ValueError, match=f"{key} 'row' needs dtype bfloat16"):
        GenerationConfig(**{key: "row"})  # float32 sampling
    with pytest.raises(ValueError, match=f"{key} must be one of"):
        GenerationConfig(**{key: "block", "dtype": "bfloat16"})


def test_generate_keeps_caller_scheduler_and_validates(pipe):
    sched = pipe.scheduler
    generate(pipe, ["a dog"], [0], GenerationConfig(steps=2, scheduler="dpm"), progress=False)
    assert pipe.scheduler is sched
    with pytest.raises(ValueError, match="same length"):
        generate(pipe, ["a", "b"], [0], CFG)
    with pytest.raises(ValueError, match="scheduler"):
        GenerationConfig(scheduler="euler-x")
    with pytest.raises(ValueError, match="unknown"):
        GenerationConfig.from_dict({"step": 3})
    assert generate(pipe, [], [], CFG) == []


def _count_generate_calls(monkeypatch) -> list[list[str]]:
    """From now on, record the prompts of every `engine.generate` call (still generating)."""
    calls: list[list[str]] = []
    real = engine.generate

    def counting(p, prompts, seeds, cfg, device="cpu", progress=True):
        calls.append(list(prompts))
        return real(p, prompts, seeds, cfg, device, progress)

    monkeypatch.setattr(engine, "generate", counting)
    return calls


def test_generate_to_dir_writes_index_and_resumes(pipe, tmp_path, monkeypatch):
    records = [
        {"prompt": p, "seed": s, "concept": c}
        for p, s, c in [("a cat", 1, "cat"), ("a dog", 2, "dog"), ("a cow", 3, "cow")]
    ]
    rows = generate_to_dir(pipe, records, CFG, tmp_path, progress=False)
    index = [json.loads(line) for line in (tmp_path / "index.jsonl").read_text().splitlines()]
    assert index == rows
    assert [r["file_name"] for r in rows] == ["000000.png", "000001.png", "000002.png"]
    assert all(r["concept"] == rec["concept"] for r, rec in zip(rows, records, strict=True))
    first = {r["file_name"]: _arr(Image.open(tmp_path / r["file_name"])) for r in rows}
    assert not list(tmp_path.glob(".*.tmp"))  # no temporaries left behind

    # "Crash": one PNG and the index missing. Only that image is generated again, identically.
    (tmp_path / "000001.png").unlink()
    (tmp_path / "index.jsonl").unlink()
    calls = _count_generate_calls(monkeypatch)
    generate_to_dir(pipe, records, CFG, tmp_path, progress=False)
    assert calls == [["a dog"]]
    assert np.array_equal(_arr(Image.open(tmp_path / "000001.png")), first["000001.png"])
    assert (tmp_path / "index.jsonl").exists()
    calls.clear()
    generate_to_dir(pipe, records, CFG, tmp_path, progress=False)
    assert calls == []


def test_grid_shape_and_placement(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(6)]
    g = save_grid(imgs, tmp_path / "g.png", rows=2, cols=3)
    pad = 2
    assert g.size == (3 * (16 + pad) + pad, 2 * (16 + pad) + pad)
    assert Image.open(tmp_path / "g.png").size == g.size
    # Image 4 sits at row 1, column 1.
    x, y = pad + 1 * (16 + pad), pad + 1 * (16 + pad)
    assert np.array_equal(np.asarray(g.crop((x, y, x + 16, y + 16))), np.asarray(imgs[4]))

    rows_only = make_grid(imgs, 2, 3, labels=["erased", "tuned"])  # row captions widen the grid only
    assert rows_only.size[0] > g.size[0] and rows_only.size[1] == g.size[1]
    labelled = make_grid(
        imgs, 2, 3, labels=["erased", "tuned"], col_labels=["a", "b", "c"], cell_labels=list("uvwxyz")
    )
    assert labelled.size[0] > g.size[0] and labelled.size[1] > g.size[1]
    with pytest.raises(ValueError, match="labels"):
        make_grid(imgs, 2, 3, labels=["only one"])
    with pytest.raises(ValueError, match="fit"):
        make_grid(imgs, 1, 3)


def test_extra_samples_draw_their_own_noise_and_sample_zero_keeps_the_seed(pipe, tmp_path):
    """Records of one (prompt, seed) with ``noise_seed`` (study.expand_records' extra samples)."""
    records = [
        {"prompt": "a cat", "seed": 1},
        {"prompt": "a cat", "seed": 1, "sample": 1, "noise_seed": 1 + 1_000_003},
        {"prompt": "a cat", "seed": 1_000_004},
    ]
    rows = generate_to_dir(pipe, records, CFG, tmp_path, progress=False)
    img = [_arr(Image.open(tmp_path / r["file_name"])) for r in rows]
    assert not np.array_equal(img[0], img[1])  # the extra sample is another image...
    assert np.array_equal(img[1], img[2])  # ...drawn from its noise seed
    alone = generate(pipe, ["a cat"], [1], CFG, "cpu", False)[0]
    assert np.array_equal(_arr(alone), img[0])


def test_stale_images_are_not_reused_after_a_model_or_record_change(pipe, tmp_path, monkeypatch):
    """A rerun (Snakemake deletes index.jsonl, not the PNGs) with new weights must draw every image anew."""
    records = [{"prompt": "a cat", "seed": 1}, {"prompt": "a dog", "seed": 2}]
    generate_to_dir(pipe, records, CFG, tmp_path, progress=False, model_key="erasure v1")
    calls = _count_generate_calls(monkeypatch)
    (tmp_path / "index.jsonl").unlink()
    generate_to_dir(pipe, records, CFG, tmp_path, progress=False, model_key="erasure v1")
    assert calls == []  # same weights and records: a resume
    generate_to_dir(pipe, records, CFG, tmp_path, progress=False, model_key="erasure v2")
    assert [p for c in calls for p in c] == ["a cat", "a dog"]  # new weights: nothing reused
    calls.clear()
    generate_to_dir(
        pipe,
        [*records, {"prompt": "a cow", "seed": 3}][::-1],
        CFG,
        tmp_path,
        progress=False,
        model_key="erasure v2",
    )
    assert sorted(p for c in calls for p in c) == [
        "a cat",
        "a cow",
        "a dog",
    ]  # new records: file names mean other images


def test_weights_key_follows_the_weights_content(tmp_path):
    """The fine-tune-set, fine-tune and generation stages key their images and checkpoints on this."""
    import os

    from resurgence.layout import ERASE_REPORT, ERASED_LORA
    from resurgence.stages import weights_key

    pipeline, erasure = tmp_path / "t2i", tmp_path / "erase"
    for d in (pipeline, erasure):
        d.mkdir()
    (pipeline / "w.safetensors").write_bytes(b"1234")
    (erasure / ERASED_LORA).write_bytes(b"abcd")
    models = {"pipeline": str(pipeline)}
    key = weights_key(models, erasure=str(erasure))
    assert weights_key(models, erasure=str(erasure)) == key
    assert weights_key(models) != key
    (erasure / ERASE_REPORT).write_text("{}")  # the erasure's report is not its weights
    st = (erasure / ERASED_LORA).stat()
    os.utime(erasure / ERASED_LORA, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    assert weights_key(models, erasure=str(erasure)) == key
    (erasure / ERASED_LORA).write_bytes(b"abce")  # rewritten: same size, mtime set back
    os.utime(erasure / ERASED_LORA, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights_key(models, erasure=str(erasure)) != key
    key = weights_key(models)
    (pipeline / "w.safetensors").write_bytes(b"12345")
    assert weights_key(models) != key
    assert json.loads(weights_key({"pipeline": "CompVis/stable-diffusion-v1-4"}))[2] == {
        "pipeline": None
    }  # a hub id not in the cache


def test_weights_key_of_a_finetune_step_is_that_checkpoint(tmp_path):
    from resurgence.finetune.train import TRAINING_STATE
    from resurgence.layout import FINAL, TRAIN_LOG, checkpoint_path
    from resurgence.stages import weights_key

    run = tmp_path / "ft"
    for d in (checkpoint_path(run, 2), run / FINAL):
        d.mkdir(parents=True)
        (d / "pytorch_lora_weights.safetensors").write_bytes(d.name.encode())
    (run / TRAIN_LOG).write_text(json.dumps({"config": {"steps": 4}}))
    models = {"pipeline": str(tmp_path / "absent")}
    at2, final = (
        weights_key(models, finetune=str(run), step=2),
        weights_key(models, finetune=str(run), step=4),
    )
    assert at2 != final
    (checkpoint_path(run, 2) / TRAINING_STATE).write_bytes(b"optimizer")  # resuming state, not weights
    assert weights_key(models, finetune=str(run), step=2) == at2
    (checkpoint_path(run, 2) / "pytorch_lora_weights.safetensors").write_bytes(b"other")
    assert weights_key(models, finetune=str(run), step=2) != at2


def _cpu_bf16(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(engine.torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(engine.torch.cpu, "_is_amx_tile_supported", lambda: False)


def test_auto_dtype_is_bf16_only_where_it_runs_natively(monkeypatch):
    """An AVX2-only CPU emulates bf16 (15x slower than fp32 here): "auto" must fall back to fp32 there."""
    _cpu_bf16(monkeypatch, False)
    assert engine.resolve_dtype("auto", "cpu") is engine.torch.float32
    _cpu_bf16(monkeypatch, True)
    assert engine.resolve_dtype("auto", "cpu") is engine.torch.bfloat16
    assert engine.resolve_dtype("bf16", "cpu") is engine.torch.bfloat16  # explicit names are kept as given
    with pytest.raises(ValueError, match="needs the device"):
        engine.resolve_dtype("auto")
    with pytest.raises(ValueError, match="'auto'"):
        GenerationConfig(dtype="bfloat15")


def test_images_drawn_under_auto_are_redrawn_on_a_machine_that_resolves_it_differently(
    pipe, tmp_path, monkeypatch
):
    """Same records, config and weights, but "auto" meant fp32 before and bf16 now: nothing is reused."""
    cfg = GenerationConfig(steps=2, batch_size=2, dtype="auto")
    records = [{"prompt": "a cat", "seed": 1}]
    _cpu_bf16(monkeypatch, False)
    generate_to_dir(pipe, records, cfg, tmp_path, progress=False)
    calls = _count_generate_calls(monkeypatch)
    (tmp_path / "index.jsonl").unlink()
    generate_to_dir(pipe, records, cfg, tmp_path, progress=False)
    assert calls == []
    (tmp_path / "index.jsonl").unlink()
    _cpu_bf16(monkeypatch, True)
    generate_to_dir(pipe, records, cfg, tmp_path, progress=False)
    assert calls == [["a cat"]]


def test_attention_backend_is_preferred_with_fallback(pipe):
    """The chosen kernel goes first in the dispatcher's order; one the CPU lacks (cuDNN) falls back."""
    default_order = torch._C._get_sdp_priority_order()
    with engine.attention_backend("cudnn"):
        order = torch._C._get_sdp_priority_order()
    assert order[0] == int(torch.nn.attention.SDPBackend.CUDNN_ATTENTION) and sorted(order) == sorted(
        default_order
    )
    assert torch._C._get_sdp_priority_order() == default_order  # restored
    a = generate(pipe, ["a cat"], [1], CFG, progress=False)
    for name in ("math", "cudnn"):
        b = generate(
            pipe, ["a cat"], [1], GenerationConfig(steps=2, batch_size=2, attention=name), progress=False
        )
        assert np.abs(_arr(a[0]) - _arr(b[0])).max() <= 2, name
    with pytest.raises(ValueError, match="attention must be one of"):
        GenerationConfig(attention="fast")


def test_base_images_from_a_pool_equal_rendering_the_task_alone(pipe, tmp_path):
    """`copy_from_pool`: a task's base images taken from a pool rendered for several tasks are the bytes
    it would have rendered itself (an image depends on its prompt and noise seed alone)."""
    task_a = [
        {"prompt": "a cat", "seed": 1, "role": "erased"},
        {"prompt": "a dog", "seed": 2, "role": "retained"},
    ]
    task_b = [
        {"prompt": "a dog", "seed": 2, "role": "erased"},
        {"prompt": "a cow", "seed": 3, "role": "retained"},
        {"prompt": "a cow", "seed": 3, "sample": 1, "noise_seed": 7, "role": "retained"},
    ]
    pool = [{"prompt": "a cow", "seed": 9, "noise_seed": 7}, *task_a, task_b[1]]  # another order
    generate_to_dir(pipe, pool, CFG, tmp_path / "pool", progress=False)
    for name, records in (("a", task_a), ("b", task_b)):
        alone = generate_to_dir(pipe, records, CFG, tmp_path / f"alone_{name}", progress=False)
        out = tmp_path / f"from_pool_{name}"
        (out / "old").mkdir(parents=True)
        (out / "old" / "stale.png").write_bytes(b"stale")
        rows = copy_from_pool(records, tmp_path / "pool", out)
        assert rows == alone  # the task's own records and file names
        assert [json.loads(x) for x in (out / "index.jsonl").read_text().splitlines()] == rows
        for r in rows:
            assert (out / r["file_name"]).read_bytes() == (
                tmp_path / f"alone_{name}" / r["file_name"]
            ).read_bytes()
        assert sorted(p.name for p in out.rglob("*.png")) == sorted(r["file_name"] for r in rows)
    with pytest.raises(ValueError, match="no image of prompt 'a fish', noise seed 4"):
        copy_from_pool([{"prompt": "a fish", "seed": 4}], tmp_path / "pool", tmp_path / "missing")
