"""Settings of the erasure methods besides MACE (`resurgence.mace.config`): UCE's and ESD's, as frozen
dataclasses. Torch-free, like MACE's: the Snakefile validates and hashes them while it builds the DAG."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from resurgence.config import settings_from_dict
from resurgence.mace.config import NULL_RCOND

# ESD's two published variants: cross-attention only, or everything but cross-attention.
TRAIN_METHODS = ("esd-x", "esd-u")


@dataclass(frozen=True)
class UCEConfig:
    """Settings of one UCE edit; defaults are the reference script's (`uce_sd_erase.py` arguments)."""

    erase_scale: float = 1.0  # --erase_scale
    preserve_scale: float = 1.0  # --preserve_scale
    lamb: float = 0.5  # --lamb: pull toward the current weights
    # Concept phrases whose keys/values must not move (--preserve_concepts).
    preserve: tuple[str, ...] = ()
    # A singular system cannot occur with lamb > 0; with lamb = 0 the minimiser closest to W is taken
    # ("pinv", as MACE's refinement) or the run stops ("raise").
    on_singular: str = "pinv"
    rcond: float = NULL_RCOND

    def __post_init__(self) -> None:
        if isinstance(self.preserve, str):
            raise TypeError("preserve must be a sequence of concept phrases, not a single string")
        object.__setattr__(self, "preserve", tuple(self.preserve))
        for name in ("erase_scale", "preserve_scale", "lamb"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"uce {name} must be >= 0, got {getattr(self, name)}")
        if self.erase_scale == 0:
            raise ValueError("uce erase_scale must be > 0: at 0 the edit erases nothing")
        if self.on_singular not in ("raise", "pinv"):
            raise ValueError(f"uce on_singular must be 'raise' or 'pinv', got {self.on_singular!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UCEConfig:
        return settings_from_dict(cls, d, "uce settings")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ESDConfig:
    """Settings of one ESD run; defaults are the maintained script's (`esd_sd.py` arguments)."""

    train_method: str = "esd-x"  # --train_method: esd-x (cross-attention) | esd-u (all but cross-attention)
    iterations: int = 200  # --iterations
    lr: float = 5.0e-5  # --lr (Adam)
    negative_guidance: float = 2.0  # --negative_guidance (eta)
    num_inference_steps: int = 50  # --num_inference_steps: the schedule x_k is sampled on
    guidance_scale: float = 3.0  # --guidance_scale of that sampling
    seed: int = 0
    # x_k and the frozen model's two noise predictions depend on the frozen model alone, so they are
    # computed before training, this many iterations' at once (their draws sorted by k, one pipeline run
    # per group). The maths is the script's; the grouping changes only float rounding, so it is a setting.
    sample_batch: int = 16
    checkpoint_every: int = 50  # training state kept every this many iterations (resume after a crash)
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.train_method not in TRAIN_METHODS:
            raise ValueError(
                f"esd train_method must be one of {list(TRAIN_METHODS)}, got {self.train_method!r}"
            )
        for name in ("iterations", "num_inference_steps", "sample_batch", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"esd {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"esd lr must be > 0, got {self.lr}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ESDConfig:
        return settings_from_dict(cls, d, "esd settings")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
