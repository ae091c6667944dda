"""An e4m3 convolution with float32 scales, as one operator: ``resurgence::scaled_conv2d`` (issue 22).

``y = conv2d(q_x * s_x, q_w * s_w) + b``: ``q_x``, ``q_w`` are ``float8_e4m3fn`` tensors, ``s_x`` one scale
for the whole input, ``s_w`` one per output channel (shape ``(K,)``). PyTorch has FP8 matrix products
(``torch._scaled_mm``) but no FP8 convolution, and SD v1.4's convolutions are 55 % of its FLOPs.

- On CUDA (Hopper and newer) the operator is one cuDNN graph (nvidia-cudnn-frontend): the FP8 convolution
  with float32 accumulation, both scales and the bias applied in its epilogue, bf16 out. Graphs are built
  once per shape and cached; the first call of a shape times every plan cuDNN offers and keeps the
  fastest (as ``torch.backends.cudnn.benchmark`` does for PyTorch's own convolutions).
- On the CPU it dequantizes and convolves in float32: the plain implementation the tests check the
  quantization against, and what runs where no GPU is.

It is a ``torch.library.custom_op`` with a shape function, so ``torch.compile`` traces through a UNet that
calls it: inductor fuses the quantization of the input into the kernels before it and leaves the
convolution to cuDNN.

Measured on an H100 with the cuDNN of torch 2.11: no faster than cuDNN's bf16 convolution at any of SD
v1.4's shapes, and 1.5-2.7x slower at its 1x1 ones (docs/generation_speed.md). ``generation.conv_fp8``
is off by default for that reason; ``benchmarks/fp8_kernels.py`` measures whatever cuDNN it is given.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def conv_output_shape(
    x_shape: Sequence[int], w_shape: Sequence[int], stride: Sequence[int], padding: Sequence[int]
) -> list[int]:
    """(N, K, H_out, W_out) of a dilation-1 convolution of an (N, C, H, W) input by a (K, C, R, S) kernel."""
    n, _, h, w = x_shape
    k, _, r, s = w_shape
    return [n, k, (h + 2 * padding[0] - r) // stride[0] + 1, (w + 2 * padding[1] - s) // stride[1] + 1]


def _channels_last_empty(shape: Sequence[int], like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=like.device).to(memory_format=torch.channels_last)


@torch.library.custom_op("resurgence::scaled_conv2d", mutates_args=())
def scaled_conv2d(
    qx: torch.Tensor,
    qw: torch.Tensor,
    scale_x: torch.Tensor,
    scale_w: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Dequantize and convolve in float32 (module doc); the CUDA kernel below replaces it on GPUs."""
    x = qx.float() * scale_x.float()
    w = qw.float() * scale_w.float().reshape(-1, 1, 1, 1)
    y = F.conv2d(x, w, None if bias is None else bias.float(), stride=stride, padding=padding)
    return y.to(out_dtype).contiguous(memory_format=torch.channels_last)


@scaled_conv2d.register_fake
def _(qx, qw, scale_x, scale_w, bias, stride, padding, out_dtype):
    return _channels_last_empty(conv_output_shape(qx.shape, qw.shape, stride, padding), qx, out_dtype)


@scaled_conv2d.register_kernel("cuda")
def _(qx, qw, scale_x, scale_w, bias, stride, padding, out_dtype):
    return cudnn_scaled_conv2d(qx, qw, scale_x, scale_w, bias, stride, padding, out_dtype)


# ---- cuDNN -----------------------------------------------------------------------------------------

# (device index) -> cuDNN handle; (shapes, stride, padding, dtypes, device) -> (graph, its tensors, plan,
# workspace bytes). Operands are made channels-last first, so shapes alone fix the strides.
_HANDLES: dict[int, int] = {}
_GRAPHS: dict[tuple, tuple] = {}
# Plans timed per shape when a graph is first built (the fastest is kept); 0 keeps cuDNN's heuristic choice.
AUTOTUNE_REPEATS = 3


def _cudnn():
    try:
        import cudnn
    except ImportError as e:  # the optional "fp8" extra
        raise RuntimeError(
            "FP8 convolutions on a GPU need nvidia-cudnn-frontend (pip install 'resurgence[fp8]')"
        ) from e
    return cudnn


def _cudnn_dtype(cudnn, dtype: torch.dtype):
    return {
        torch.bfloat16: cudnn.data_type.BFLOAT16,
        torch.float16: cudnn.data_type.HALF,
        torch.float32: cudnn.data_type.FLOAT,
        torch.float8_e4m3fn: cudnn.data_type.FP8_E4M3,
    }[dtype]


def _handle(cudnn, device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _HANDLES:
        with torch.cuda.device(index):
            _HANDLES[index] = cudnn.create_handle()
    return _HANDLES[index]


def _build_graph(cudnn, handle, qx, qw, scale_x, scale_w, bias, stride, padding, out_shape, out_dtype):
    """The convolution, both scales, the bias and the cast to ``out_dtype`` as one cuDNN graph."""
    g = cudnn.pygraph(
        io_data_type=_cudnn_dtype(cudnn, out_dtype),
        intermediate_data_type=cudnn.data_type.FLOAT,
        compute_data_type=cudnn.data_type.FLOAT,
        handle=handle,
    )
    k = qw.shape[0]
    per_channel = [1, k, 1, 1]
    x = g.tensor(name="x", dim=list(qx.shape), stride=list(qx.stride()), data_type=cudnn.data_type.FP8_E4M3)
    w = g.tensor(name="w", dim=list(qw.shape), stride=list(qw.stride()), data_type=cudnn.data_type.FP8_E4M3)
    sx = g.tensor(name="sx", dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=cudnn.data_type.FLOAT)
    sw = g.tensor(name="sw", dim=per_channel, stride=[k, 1, 1, 1], data_type=cudnn.data_type.FLOAT)
    y = g.conv_fprop(image=x, weight=w, padding=list(padding), stride=list(stride), dilation=[1, 1])
    y = g.mul(a=y, b=sx)
    y = g.mul(a=y, b=sw)
    tensors = {"x": x, "w": w, "sx": sx, "sw": sw}
    if bias is not None:
        b = g.tensor(
            name="b", dim=per_channel, stride=[k, 1, 1, 1], data_type=_cudnn_dtype(cudnn, bias.dtype)
        )
        y = g.add(a=y, b=b)
        tensors["b"] = b
    n, _, h, wd = out_shape
    y.set_output(True)
    y.set_data_type(_cudnn_dtype(cudnn, out_dtype))
    y.set_dim(list(out_shape))
    y.set_stride([k * h * wd, 1, wd * k, k])  # channels-last, as the UNet's convolutions write
    tensors["y"] = y
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans(
        cudnn.build_plan_policy.ALL if AUTOTUNE_REPEATS else cudnn.build_plan_policy.HEURISTICS_CHOICE
    )
    return g, tensors


def _fastest_plan(g, pack: dict, device: torch.device) -> tuple[int | None, int]:
    """(plan index, workspace bytes) of the plan that ran fastest on ``pack``; (None, size) without autotuning."""
    if not AUTOTUNE_REPEATS:
        return None, g.get_workspace_size()
    best: tuple[float, int, int] | None = None
    for index in range(g.get_execution_plan_count()):
        try:
            size = g.get_workspace_size_plan_at_index(index)
            ws = torch.empty(size, dtype=torch.uint8, device=device)
            g.execute_plan_at_index(
                pack, ws, index=index
            )  # warm-up (and a plan that fails to run is skipped)
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(AUTOTUNE_REPEATS):
                g.execute_plan_at_index(pack, ws, index=index)
            torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
        except Exception:  # noqa: BLE001 - a plan cuDNN built but cannot run here is not a candidate
            continue
        if best is None or seconds < best[0]:
            best = (seconds, index, size)
    if best is None:
        raise RuntimeError("cuDNN built no FP8 convolution plan that runs on this device")
    return best[1], best[2]


def cudnn_scaled_conv2d(qx, qw, scale_x, scale_w, bias, stride, padding, out_dtype) -> torch.Tensor:
    """`scaled_conv2d` through a cached cuDNN graph (module doc)."""
    cudnn = _cudnn()
    device = qx.device
    qx = qx.contiguous(memory_format=torch.channels_last)
    qw = qw.contiguous(memory_format=torch.channels_last)
    scale_x = scale_x.float().reshape(1, 1, 1, 1).contiguous()
    scale_w = scale_w.float().reshape(1, -1, 1, 1).contiguous()
    out_shape = conv_output_shape(qx.shape, qw.shape, stride, padding)
    handle = _handle(cudnn, device)
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(device).cuda_stream)
    key = (
        tuple(qx.shape), tuple(qw.shape), tuple(stride), tuple(padding), out_dtype,
        None if bias is None else bias.dtype, device,
    )  # fmt: skip
    y = _channels_last_empty(out_shape, qx, out_dtype)
    buffers = {"x": qx, "w": qw, "sx": scale_x, "sw": scale_w, "y": y}
    if bias is not None:
        buffers["b"] = bias.reshape(1, -1, 1, 1).contiguous()
    if key not in _GRAPHS:
        g, tensors = _build_graph(
            cudnn, handle, qx, qw, scale_x, scale_w, bias, stride, padding, out_shape, out_dtype
        )
        pack = {tensors[name]: buffers[name] for name in tensors}
        _GRAPHS[key] = (g, tensors, *_fastest_plan(g, pack, device))
    g, tensors, plan, size = _GRAPHS[key]
    pack = {tensors[name]: buffers[name] for name in tensors}
    workspace = torch.empty(size, dtype=torch.uint8, device=device)
    if plan is None:
        g.execute(pack, workspace, handle=handle)
    else:
        g.execute_plan_at_index(pack, workspace, index=plan, handle=handle)
    return y
