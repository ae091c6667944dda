"""Helpers of the benchmark scripts (benchmarks/common.py)."""

import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from common import inductor_settings  # noqa: E402  (benchmarks/ is a script folder)


def test_inductor_settings_patch_only_inside_and_name_bad_keys():
    import torch._inductor.config as inductor_config

    before = (inductor_config.layout_optimization, inductor_config.conv_1x1_as_mm)
    with inductor_settings([f"layout_optimization={not before[0]}", f"conv_1x1_as_mm={not before[1]}"]):
        assert (inductor_config.layout_optimization, inductor_config.conv_1x1_as_mm) == (
            not before[0],
            not before[1],
        )
    assert (inductor_config.layout_optimization, inductor_config.conv_1x1_as_mm) == before
    for bad in ("no_such_setting=1", "layout_optimization"):
        with pytest.raises(SystemExit, match="key=value"):
            inductor_settings([bad])


def test_kernel_kind_counts_inductor_fusions_as_their_own_kind():
    """A compiled UNet's triton kernels carry the fused ops' names (a convolution's bias, a layout copy
    before attention); they are not convolution or attention time."""
    from unet_profile import kernel_kind

    assert kernel_kind("triton_poi_fused_convolution_0") == "fused (triton)"
    assert kernel_kind("triton_poi_fused__scaled_dot_product_flash_attention_clone_3") == "fused (triton)"
    assert kernel_kind("triton_red_fused_native_group_norm_1") == "fused (triton)"
    assert kernel_kind("triton_tem_fused_mm_4") == "matmul"
    assert kernel_kind("triton_tem_fused_convolution_2") == "convolution"
    assert kernel_kind("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "convolution"
    assert kernel_kind("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_NNT") == "matmul"
    assert kernel_kind("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3") == "attention"
    assert kernel_kind("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64>>") == "attention"


def test_kernel_totals_count_each_gpu_kernel_once():
    """A profile of CPU and CUDA activity (the fine-tune benchmark's) has autograd's and the operators' rows
    beside the kernels, each carrying its kernels' device time again, and the optimizer's range drawn on the GPU:
    only the kernels count."""
    from types import SimpleNamespace

    import torch
    from torch.autograd import DeviceType
    from unet_profile import kernel_totals

    def row(key, device_type, self_us, total_us, count=2, annotation=False):
        return SimpleNamespace(key=key, device_type=device_type, self_device_time_total=self_us,
                               device_time_total=total_us, self_cpu_time_total=1.0, count=count,
                               is_user_annotation=annotation)  # fmt: skip

    events = [
        row("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_kernel", DeviceType.CUDA, 300.0, 300.0),
        row("ScaledDotProductCudnnAttentionBackward0", DeviceType.CPU, 0.0, 300.0),
        row(
            "autograd::engine::evaluate_function: ScaledDotProductCudnnAttentionBackward0",
            DeviceType.CPU,
            0.0,
            300.0,
        ),
        row("aten::_scaled_dot_product_cudnn_attention_backward", DeviceType.CPU, 0.0, 300.0),
        row("void at::native::direct_copy_kernel_cuda", DeviceType.CUDA, 40.0, 40.0, count=6),
        row("Memcpy HtoD (Pageable -> Device)", DeviceType.CUDA, 9.0, 9.0),
        row("cudaLaunchKernel", DeviceType.CPU, 0.0, 0.0, count=8),
        # the optimizer's record_function range on the GPU's timeline (32 ms in a profile of 2026-12-06)
        row("Optimizer.step#AdamW.step", DeviceType.CUDA, 340.0, 340.0, count=1, annotation=True),
    ]
    prof = SimpleNamespace(key_averages=lambda: events)
    assert kernel_totals(prof, torch.device("cuda")) == {
        "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_kernel": (300.0, 2),
        "void at::native::direct_copy_kernel_cuda": (40.0, 6),
    }


def test_paper_cost_takes_rates_measured_with_the_presets_settings(tmp_path):
    """Rows of other sampling, engine or training settings run at other speeds: only matching rows count
    (median); MACE's rates come from its own rows in the erased model's dtype."""
    import json

    from paper_cost import measured_rates

    base = dict(
        benchmark="generation",
        arch="sd14",
        machine={"gpu": "NVIDIA H100 80GB HBM3"},
        steps=50,
        guidance=7.5,
        batch=32,
        compile="default",
        channels_last=True,
        dtype="bfloat16",
        inductor=None,
    )
    rows = [
        {**base, "images_per_s": 4.0},
        {**base, "images_per_s": 4.4, "attention": "default"},
        {**base, "images_per_s": 4.2},
        {**base, "images_per_s": 9.0, "batch": 16},
        {**base, "images_per_s": 9.0, "compile": "none"},
        {**base, "images_per_s": 9.0, "attention": "cudnn"},
        {**base, "images_per_s": 9.0, "dtype": "float16"},
        {**base, "images_per_s": 9.0, "inductor": ["freezing=True"]},
        {**base, "images_per_s": 9.0, "freeze_weights": True},
        {**base, "images_per_s": 9.0, "linear_fp8": "row"},
        {**base, "images_per_s": 9.0, "machine": {"gpu": "NVIDIA H200"}},
        {**base, "images_per_s": 1.8, "arch": "sd21"},  # another architecture: priced only when asked for
    ]
    ft = dict(
        benchmark="finetune",
        arch="sd14",
        machine=base["machine"],
        method="lora",
        batch=8,
        rank=4,
        mixed_precision="bf16",
    )
    rows += [
        {**ft, "steps_per_s": 2.5},
        {**ft, "steps_per_s": 2.7},
        {**ft, "steps_per_s": 1.5, "mixed_precision": "no"},
        {**ft, "steps_per_s": 9.0, "batch": 4},
        {**ft, "steps_per_s": 9.0, "rank": 16},
        {**ft, "steps_per_s": 3.0, "method": "full", "rank": None},  # rank: a LoRA setting only
        # the trainer's own (cached encodings) rows price a method where they exist
        {**ft, "steps_per_s": 4.0, "mixed_precision": "no", "encodings_cached": True},
        {**ft, "steps_per_s": 4.4, "mixed_precision": "no", "encodings_cached": True},
        {**ft, "steps_per_s": 1.3, "mixed_precision": "no", "encodings_cached": False},
    ]
    mace = dict(
        benchmark="mace_erase",
        arch="sd14",
        machine=base["machine"],
        dtype="float32",
        concepts=100,
        images_per_concept=1,
        data_steps=20,
    )
    rows += [
        {**mace, "lora_steps_per_s": 6.0, "data_seconds": 100.0},
        {**mace, "lora_steps_per_s": 9.0, "data_seconds": 10.0, "dtype": "bfloat16"},
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    preset = dict(
        steps=50, guidance_scale=7.5, batch_size=32, compile="default", channels_last=True, dtype="auto"
    )
    lora = dict(method="lora", steps=200, learning_rate=1e-4, batch_size=8, checkpoint_every=50, seed=0)
    methods = {
        "lora": {**lora, "mixed_precision": "bf16"},
        "lora_fp32": lora,
        "full": {**lora, "method": "full", "mixed_precision": "bf16"},
    }
    rates = measured_rates("H100", preset, methods, path=path)
    assert rates["images_per_s"] == 4.2 and rates["generation_rows"] == 3
    assert rates["finetune_steps_per_s"] == {"lora": 2.6, "lora_fp32": 4.2, "full": 3.0}
    assert rates["finetune_encodings_cached"] == {"lora": False, "lora_fp32": True, "full": False}
    assert rates["mace_lora_steps_per_s"] == 6.0 and rates["mace_data_s_per_image_step"] == 100.0 / 2000
    assert measured_rates("H100", {**preset, "batch_size": 64}, path=path)["images_per_s"] is None
    sd21 = measured_rates("H100", preset, path=path, arch="sd21")
    assert sd21["images_per_s"] == 1.8 and sd21["generation_rows"] == 1


def test_finetune_step_flops_match_forward_and_backward_of_the_unet(tmp_path):
    """A step that encodes its batch = VAE encode + text encoder + UNet forward and backward; with the trainer's
    cached encodings, the UNet's alone. Backward costs about twice the forward where weights train (full),
    about once where only activations' gradients flow (LoRA)."""
    from types import SimpleNamespace

    import torch
    from finetune import flops_per_step
    from torch.utils.flop_counter import FlopCounterMode

    from resurgence.models.pipeline import build_random_pipeline

    pipe = build_random_pipeline("tiny")
    cfg, res, batch = pipe.unet.config, pipe.unet.config.sample_size * pipe.vae_scale_factor, 2
    ids = pipe.tokenizer(["A sketch of Person 0"] * batch, padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids  # fmt: skip
    with torch.no_grad():
        with FlopCounterMode(display=False) as text:
            ctx = pipe.text_encoder(ids)[0]
        with FlopCounterMode(display=False) as unet:
            z = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
            pipe.unet(z, torch.tensor([10] * batch), encoder_hidden_states=ctx)
        with FlopCounterMode(display=False) as vae:
            pipe.vae.encode(torch.randn(batch, 3, res, res))
    encoders = text.get_total_flops() + vae.get_total_flops()
    args = SimpleNamespace(batch=batch, rank=4, mixed_precision="no")
    cpu = torch.device("cpu")
    full = flops_per_step("tiny", "full", args, cpu, tmp_path, cache=False)
    lora = flops_per_step("tiny", "lora", args, cpu, tmp_path, cache=False)
    assert 2.8 < (full - encoders) / unet.get_total_flops() < 3.05
    assert 1.85 < (lora - encoders) / unet.get_total_flops() < 2.1
    full_cached = flops_per_step("tiny", "full", args, cpu, tmp_path, cache=True)
    lora_cached = flops_per_step("tiny", "lora", args, cpu, tmp_path, cache=True)
    assert 2.8 < full_cached / unet.get_total_flops() < 3.05
    assert 1.85 < lora_cached / unet.get_total_flops() < 2.1


def test_finetune_step_flops_are_per_sample(tmp_path):
    """flops_per_step counts at batch 1 and multiplies: exact only if every counted op scales with the batch."""
    from types import SimpleNamespace

    import torch
    from finetune import counted_step_flops

    args = SimpleNamespace(batch=3, rank=4, mixed_precision="no")
    for method in ("lora", "full"):
        for cache in (False, True):
            count = dict(
                arch="tiny", method=method, args=args, device=torch.device("cpu"), work=tmp_path, cache=cache
            )
            one, three = counted_step_flops(**count, batch=1), counted_step_flops(**count, batch=3)
            assert one > 0 and three == 3 * one, (method, cache)


def test_study_profile_sums_each_stages_jobs_from_their_benchmark_files(tmp_path):
    """Stages are the benchmark folders' first level; a job's time is its file's last row (a retried job
    appends one)."""
    from study import stage_profile

    header = "s\th:m:s\tmax_rss\n"
    files = {
        "generate/identity_1/base.tsv": header + "10.5\t0:00:10\t1\n",
        "generate/identity_1/default/erased.tsv": header + "99.0\t0:01:39\t1\n4.5\t0:00:04\t1\n",
        "erase/identity_1/default.tsv": header + "30.0\t0:00:30\t1\n",
        "finetune/empty.tsv": header,
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert stage_profile(tmp_path) == {
        "generate": {"jobs": 2, "job_s": 15.0, "longest_s": 10.5},
        "erase": {"jobs": 1, "job_s": 30.0, "longest_s": 30.0},
    }


def test_phase_profile_sums_each_stages_reported_phases_and_skips_jobs_that_reported_none(tmp_path):
    from study import phase_profile

    from resurgence.phases import phases_line, split_job

    logs = {
        "generate/identity_1/base.log": "copying\n" + phases_line(split_job({"write": 1.5}, 0.25, 2.0)),
        "generate/identity_1/default/erased.log": "bar 7/7\r"
        + phases_line(split_job({"load": 1.0, "sample": 20.0, "write": 2.0}, 0.5, 24.0))
        + "\n",
        "generate/old.log": "a job of before: no phases\n",
        "erase/identity_1/default.log": phases_line(split_job({"train": 30.0, "sample": 10.0}, 0.5, 41.0)),
    }
    for rel, text in logs.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    profile = phase_profile(tmp_path)
    assert set(profile) == {"generate", "erase"}
    gen = profile["generate"]
    assert gen["jobs"] == 2
    assert gen["startup"] == 0.75 and gen["load"] == 1.0 and gen["sample"] == 20.0 and gen["write"] == 3.5
    assert gen["other"] == 0.75  # 0.25 of the copy job, 0.5 of the generation job
    assert profile["erase"] == {
        "jobs": 1,
        "startup": 0.5,
        "load": 0.0,
        "sample": 10.0,
        "train": 30.0,
        "score": 0.0,
        "write": 0.0,
        "other": 0.5,
    }


def test_own_cpu_seconds_agree_with_the_processs_own_clock_and_exclude_its_children():
    import os
    import subprocess
    import sys

    from study import own_cpu_seconds

    t0 = time.process_time()
    while time.process_time() - t0 < 0.3:  # spend CPU here
        pass
    # A child that spends CPU of its own: not counted in this process's figure.
    subprocess.run(
        [sys.executable, "-c", "import time\nt=time.process_time()\nwhile time.process_time()-t<1.0: pass"]
    )
    mine, clock = own_cpu_seconds(os.getpid()), time.process_time()
    # Tick-based accounting against the precise clock: well under the child's 1 s, which must not count.
    assert mine is not None and abs(mine - clock) < 0.2
    assert own_cpu_seconds(2**22 + 12345) is None  # no such process


def test_the_generation_baseline_draws_the_engines_images_and_the_ratio_is_recorded(monkeypatch):
    """The plain pipeline starts from the engine's latents with its scheduler and weights, so the two
    draw the same images (fp32, no levers: both equal the fp32 reference); the engine's row carries the
    baseline's rate and their ratio. torch.compile is the identity here: a CPU compile takes minutes and
    must not change the images."""
    import generation

    monkeypatch.setattr(generation.torch, "compile", lambda module: module)
    rows = []
    monkeypatch.setattr(generation, "record", lambda name, row: rows.append((name, row)) or row)
    generation.main(
        ["--arch", "tiny", "--device", "cpu", "--batch", "2", "--images", "2", "--steps", "2"]
        + ["--guidance", "3.0", "--baseline", "--reference", "2"]
    )
    (base_name, base), (engine_name, engine) = rows
    assert (base_name, engine_name) == ("generation_baseline", "generation")
    assert base["difference_from_reference"]["mean_abs"] == 0.0
    assert engine["difference_from_reference"]["mean_abs"] == 0.0
    assert engine["baseline_images_per_s"] == base["images_per_s"]
    assert engine["speedup_vs_baseline"] == pytest.approx(
        engine["images_per_s"] / base["images_per_s"], rel=0.01
    )


def test_finetune_profile_counts_each_step_once_whatever_the_run_length(tmp_path):
    """`profile_steps` subtracts a 2-step run from a longer one: set-up, the first steps and saving cancel,
    so a step's operator calls are the same measured over 1 or 3 steps."""
    from types import SimpleNamespace

    import torch
    from finetune import noise_set, per_step, profile_steps

    from resurgence.models.pipeline import build_random_pipeline

    assert per_step({"a": (10.0, 2)}, {"a": (40.0, 8), "b": (6.0, 3)}, 3) == {
        "a": (10.0, 2.0),
        "b": (2.0, 1.0),
    }
    cpu = torch.device("cpu")
    probe = build_random_pipeline("tiny")
    resolution = probe.unet.config.sample_size * probe.vae_scale_factor
    data = noise_set(tmp_path / "data", 2, resolution)  # one batch holds every example: all encoded in step 1
    rows = {}
    for method in ("lora", "full"):
        for n in (1, 3):
            args = SimpleNamespace(arch="tiny", batch=2, rank=4, mixed_precision="no", profile_steps=n)
            rows[method, n] = profile_steps(method, True, args, cpu, data, tmp_path / f"{method}{n}")
        assert rows[method, 1]["launches_per_step"] == rows[method, 3]["launches_per_step"] > 0, method
        # A step's milliseconds are a difference of two timings, too noisy on a loaded CI machine to assert on
        # (a 3-step run's loop once took 0.8 s less than a 2-step one's); the row must carry them.
        assert {"step_wall_ms", "kernel_ms_per_step", "by_kind", "top_kernels"} <= rows[method, 3].keys()


def test_cuda_startup_times_every_step_in_every_forked_process():
    """Each fork reports each step once (the toy pipeline really loaded), and the summary's median and slowest
    agree with the per-process seconds. The forks start from a fresh interpreter that has only imported, as
    the fork server's do: forked after this test process's torch work, a child can hang in its thread pool."""
    import json
    import subprocess

    code = (
        "import json, cuda_startup; from resurgence.forkserver import preload_before_forks; "
        "preload_before_forks(['resurgence.models.pipeline']); "
        "print(json.dumps(cuda_startup.time_startup(2, 'cpu', 'resources/toyworld/t2i')))"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCHMARKS), str(ROOT)]))
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    import cuda_startup

    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(results) == 2 and all(set(r) == set(cuda_startup.STEPS) for r in results)
    assert all(r["pipeline"] > 0 for r in results)
    s = cuda_startup.summary(results)
    totals = sorted(sum(r.values()) for r in results)
    assert s["total"]["max_s"] == round(totals[1], 4)
    assert s["total"]["median_s"] == round((totals[0] + totals[1]) / 2, 4)
    assert s["cudnn"]["max_s"] == round(max(r["cudnn"] for r in results), 4)


def test_fp8_kernel_totals_weigh_shapes_by_count_and_keep_ineligible_layers_at_bf16():
    from fp8_kernels import totals

    rows = [
        {"count": 3, "flop": 2e12, "bf16_ms": 10.0, "fp8_ms": 4.0, "quantize_ms": 1.0},
        {"count": 2, "flop": 1e12, "bf16_ms": 5.0, "fp8": "not eligible"},  # stays bf16 in every column
    ]
    t = totals(rows)
    # by hand: bf16 3*10 + 2*5 = 40 ms; FP8 3*4 + 2*5 = 22; with quantization 22 + 3*1 = 25; 8 TFLOP
    assert (t["bf16_ms"], t["fp8_ms"], t["fp8_with_quantize_ms"], t["tflop"]) == (40.0, 22.0, 25.0, 8.0)
    assert t["speedup"] == round(40 / 22, 4) and t["speedup_with_quantize"] == 1.6
    assert t["bf16_tflops"] == 200.0  # 8 TFLOP in 40 ms
