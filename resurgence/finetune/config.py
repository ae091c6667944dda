"""Fine-tuning configuration (the attack: benign fine-tuning of an erased model)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass
from typing import Any, Literal

from resurgence.generate import COMPILE_MODES

LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Settings of one fine-tuning run; keyword-only so config keys map 1:1 to fields.

    ``alpha`` None means ``alpha = rank`` (scale 1, as diffusers' train_text_to_image_lora.py).
    ``steps`` counts optimizer updates; each consumes ``batch_size * grad_accum`` images.
    ``checkpoint_every`` None keeps the final weights only (``steps``). The defaults here are the only
    ones (the config schema's ``finetune_methods`` names these fields and gives none).
    ``compile`` runs the UNet's training forward and backward through ``torch.compile`` in that mode
    ("none": eager): fused elementwise work and far fewer operator dispatches. SD v1.4's LoRA step ran 1.26x
    faster compiled on an H100, after about a minute of compiling (docs/generation_speed.md), so it pays for
    long runs only. Compiled kernels round differently, so it is part of the run's identity.
    """

    method: Literal["lora", "full"] = "lora"
    steps: int
    learning_rate: float
    batch_size: int
    rank: int = 4
    alpha: float | None = None
    target_modules: tuple[str, ...] = LORA_TARGETS
    train_text_encoder: bool = False
    checkpoint_every: int | None = None
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    lr_warmup_steps: int = 0
    compile: str = "none"

    def __post_init__(self) -> None:
        if self.checkpoint_every is None:  # frozen, hence object.__setattr__
            object.__setattr__(self, "checkpoint_every", self.steps)
        if self.method not in ("lora", "full"):
            raise ValueError(f"method must be 'lora' or 'full', got {self.method!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {list(COMPILE_MODES)}, got {self.compile!r}")
        for name in ("steps", "batch_size", "checkpoint_every", "grad_accum", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_warmup_steps < 0:
            raise ValueError(f"lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        if not isinstance(self.target_modules, tuple):  # lists from YAML; frozen, hence object.__setattr__
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        """Build from a config mapping; unknown keys are an error naming them (no silent typos)."""
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown FinetuneConfig keys: {unknown}")
        required = {n for n, f in cls.__dataclass_fields__.items() if f.default is MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise ValueError(f"missing FinetuneConfig keys: {missing}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d
