"""What every erasure method produces, and how the stages after it read it back.

A method (`resurgence.mace`, `resurgence.erasure.uce`, the exact-unlearning control's `no_erasure`)
returns an `Erasure`: the change of each weight it edits (final - base) and a report. `save_erasure`
writes the change as an exact diffusers LoRA (SVD of each delta) beside `report.json`, so
`apply_erasure` fuses any method's edit into a copy of the base model the same way and fine-tuning
starts from plain erased weights.
"""

from __future__ import annotations

import re
import resource
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from resurgence.io import read_json, save_safetensors, write_json
from resurgence.layout import ERASE_REPORT, ERASED_LORA
from resurgence.phases import LOAD, WRITE, in_phase

# Dense changes of parameters a LoRA cannot carry exactly or cheaply (full-rank weights, convolutions,
# biases: ESD's fine-tuned layers), keyed by parameter name; written only by methods that make them.
DENSE_FILE = "erased_dense.safetensors"
ADAPTER_NAME = "erasure"  # the adapter name while an erasure is fused (unloaded after)


@dataclass(frozen=True)
class ConceptSpec:
    """One concept to erase: its name, the prompts MACE trains on, and the phrases naming it."""

    name: str
    prompts: tuple[str, ...]
    phrases: tuple[str, ...] = ()  # name + synonyms; defaults to (name,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "phrases", tuple(self.phrases) or (self.name,))
        if not self.prompts:
            raise ValueError(f"concept {self.name!r} has no prompts")


@dataclass
class Erasure:
    """The result of an erasure method: low-rank weight deltas on the base model (Linear module name ->
    delta of its weight), dense parameter deltas (parameter name -> delta), MACE's per-concept LoRAs,
    and a report."""

    deltas: dict[str, torch.Tensor]
    concept_loras: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)


def cross_attention_names(unet) -> list[str]:
    """Module names of the UNet's cross-attention blocks (`...attn2`), in module order."""
    return [
        n for n, m in unet.named_modules() if n.endswith("attn2") and getattr(m, "is_cross_attention", False)
    ]


def kv_module_names(unet) -> list[str]:
    """`<attn2>.to_k` and `<attn2>.to_v` for every cross-attention block, in module order."""
    return [f"{a}.{p}" for a in cross_attention_names(unet) for p in ("to_k", "to_v")]


def base_linear(unet, name: str) -> torch.nn.Linear:
    """The Linear layer named ``name`` (the base layer under a PEFT wrapper)."""
    m = unet.get_submodule(name)
    return getattr(m, "base_layer", m)


def kv_weights(unet, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Copies (float64, CPU) of the cross-attention key/value weights MACE edits (`kv_module_names`, or
    just ``names``)."""
    names = kv_module_names(unet) if names is None else names
    return {n: base_linear(unet, n).weight.detach().to("cpu", torch.float64).clone() for n in names}


def slug(name: str) -> str:
    """A file-name form of a concept name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "concept"


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory of the run so far: CUDA allocations on a GPU, the process' max RSS elsewhere."""
    if device.type == "cuda":
        return {"kind": "cuda_max_memory_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    return {
        "kind": "process_max_rss",
        "bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
    }


@torch.no_grad()
def set_weights(unet, names: Sequence[str], weights: Sequence[torch.Tensor]) -> None:
    """Copy ``weights`` into the named Linear layers (in their dtype and device)."""
    for n, w in zip(names, weights, strict=True):
        lin = base_linear(unet, n)
        lin.weight.copy_(w.to(lin.weight.device, lin.weight.dtype))


@torch.no_grad()
def apply_deltas(unet, deltas: dict[str, torch.Tensor]) -> None:
    """Add ``deltas`` to the named Linear weights in place (in memory, no LoRA machinery)."""
    for n, d in deltas.items():
        lin = base_linear(unet, n)
        lin.weight.add_(d.to(lin.weight.device, lin.weight.dtype))


# ----------------------------------------------------------------------------- persistence


def lora_deltas(state_dict: dict[str, torch.Tensor], scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-module dense update dW = scale * B @ A from a peft LoRA state dict (keys `<module>.lora_A.weight`)."""
    out: dict[str, torch.Tensor] = {}
    for k, A in state_dict.items():
        if ".lora_A." not in k:
            continue
        module = k.split(".lora_A.")[0]
        B = state_dict[k.replace(".lora_A.", ".lora_B.")]
        out[module] = scale * (B.to(torch.float64) @ A.to(torch.float64))
    return out


def deltas_to_lora(
    deltas: dict[str, torch.Tensor], rtol: float = 1e-6, prefix: str = "unet."
) -> dict[str, torch.Tensor]:
    """Exact low-rank factors of each delta: B = U sqrt(S), A = sqrt(S) V^T, dropping singular values
    below ``rtol`` x the largest. No alphas are stored, so diffusers uses alpha = rank (scale 1)."""
    out: dict[str, torch.Tensor] = {}
    for n, d in deltas.items():
        U, S, Vh = torch.linalg.svd(d.to(torch.float64), full_matrices=False)
        tol = rtol * float(S[0]) if S.numel() else 0.0
        r = max(1, int((tol < S).sum())) if tol > 0 else 1
        s = S[:r].sqrt()
        out[f"{prefix}{n}.lora_A.weight"] = (s[:, None] * Vh[:r]).to(torch.float32)
        out[f"{prefix}{n}.lora_B.weight"] = (U[:, :r] * s[None, :]).to(torch.float32)
    return out


def lora_file_deltas(path: str | Path, prefix: str = "unet.") -> dict[str, torch.Tensor]:
    """Dense deltas (float64) stored in a LoRA file written by `save_erasure`."""
    from safetensors.torch import load_file

    sd = load_file(str(path))
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in lora_deltas(sd).items()}


def no_erasure(unet, spec: dict[str, Any]) -> Erasure:
    """A zero edit of every key/value map: the erased state of a model that never learned the concepts
    (the exact-unlearning control), written like any erasure so the stages after it run unchanged."""
    deltas = {n: torch.zeros_like(w) for n, w in kv_weights(unet).items()}
    return Erasure(
        deltas=deltas,
        report={"method": "none", "spec": spec, "concepts": [c["name"] for c in spec["concepts"]]},
    )


@in_phase(WRITE)
def save_erasure(erasure: Erasure, out_dir: str | Path) -> Path:
    """Write `erased_lora.safetensors` (empty when the method changed no weight at low rank), the dense
    deltas (`erased_dense.safetensors`, when there are any), `concepts/<slug>.safetensors` and
    `report.json` (last)."""
    out = Path(out_dir)
    lora = deltas_to_lora(erasure.deltas)
    method = erasure.report.get("method", "mace")
    meta = {
        "format": "pt",
        "producer": f"resurgence.{method}",
        "note": f"{method.upper()} erasure: fuse at scale 1 into the base model",
    }
    save_safetensors(lora, out / ERASED_LORA, metadata=meta)
    if erasure.dense:
        save_safetensors(
            erasure.dense, out / DENSE_FILE, metadata={**meta, "note": "add to the named parameters"}
        )
    concept_files = {}
    for name, sd in erasure.concept_loras.items():
        path = out / "concepts" / f"{slug(name)}.safetensors"
        # Per-concept LoRAs are relative to the *refined* weights, not the base model.
        save_safetensors(
            {f"unet.{k}": v for k, v in sd.items()},
            path,
            metadata={"format": "pt", "concept": name, "relative_to": "refined"},
        )
        concept_files[name] = str(path.relative_to(out))
    report = dict(erasure.report)
    report["lora_file"] = ERASED_LORA
    report["lora_ranks"] = {
        k[len("unet.") : -len(".lora_A.weight")]: int(v.shape[0])
        for k, v in lora.items()
        if k.endswith("lora_A.weight")
    }
    report["concept_lora_files"] = concept_files
    if erasure.dense:
        report["dense_file"] = DENSE_FILE
        report["dense_parameters"] = len(erasure.dense)
    write_json(out / ERASE_REPORT, report)
    return out


def load_report(out_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(out_dir) / ERASE_REPORT)


@in_phase(LOAD)
def apply_erasure(
    pipe, out_dir: str | Path, weight_name: str = ERASED_LORA, rtol: float = 1e-5
) -> dict[str, torch.Tensor]:
    """Load the erasure LoRA, fuse it and unload the adapter, then add the dense deltas (if any); check
    that every changed weight == base + delta.

    Returns the applied low-rank deltas. Raises RuntimeError when the fused weights do not match.
    """
    out = Path(out_dir)
    deltas = lora_file_deltas(out / weight_name)
    unet = pipe.unet
    before = kv_weights(unet, deltas)
    if deltas:  # an empty LoRA (a method whose change is all dense) has nothing to load
        pipe.load_lora_weights(str(out), weight_name=weight_name, adapter_name=ADAPTER_NAME)
        pipe.fuse_lora(lora_scale=1.0, adapter_names=[ADAPTER_NAME])
        pipe.unload_lora_weights()
    if (out / DENSE_FILE).is_file():
        _add_dense(unet, out / DENSE_FILE, rtol)
    after = kv_weights(unet, deltas)
    bad = []
    for n, d in deltas.items():
        w = after[n]
        expected = before[n] + d
        err = float((w - expected).norm() / expected.norm().clamp_min(1e-30))
        if not err <= rtol:
            bad.append(f"{n}: rel err {err:.2e}")
    if bad:
        raise RuntimeError(f"fused erasure does not match base + delta (rtol {rtol:g}): {bad[:5]}")
    return {n: d.to(torch.float32) for n, d in deltas.items()}


@torch.no_grad()
def _add_dense(unet, path: Path, rtol: float) -> None:
    """Add the dense deltas in ``path`` to the UNet's named parameters, checking each sum."""
    from safetensors.torch import load_file

    params = dict(unet.named_parameters())
    bad = []
    for name, d in load_file(str(path)).items():
        if name not in params:
            raise RuntimeError(f"{path} changes parameter {name!r}, which this UNet does not have")
        p = params[name]
        expected = p.detach().to(torch.float64) + d.to(p.device, torch.float64)
        p.add_(d.to(p.device, p.dtype))
        err = float((p.to(torch.float64) - expected).norm() / expected.norm().clamp_min(1e-30))
        if not err <= max(rtol, torch.finfo(p.dtype).eps * 4):
            bad.append(f"{name}: rel err {err:.2e}")
    if bad:
        raise RuntimeError(f"dense erasure does not match base + delta: {bad[:5]}")
