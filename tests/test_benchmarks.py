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
