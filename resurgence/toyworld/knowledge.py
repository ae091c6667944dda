"""The toy world's concept knowledge: what a name means beyond its pixels, with a shared structure.

SD v1.4's text encoder is CLIP's, trained on far more than SD's images, so a celebrity's name
carries much besides the face; and in CLIP's embedding space names of one domain share a large
common component (App. C.2 of the paper: the minimum cosine similarity of CelebA celebrities to
10 erased ones spans 0.17-0.80; of CIFAR-100 objects to 5 erased ones 0.68-0.84). The toy world
stands that knowledge in by one unit vector per concept, learned by the toy text encoder
(`t2i.knowledge_loss`) and by the toy CLIP (`clip.knowledge_gram_loss`), built as

    k_i = sqrt(s_i) * normalise(sqrt(1 - tau) * d_domain + sqrt(tau) * g_i) + sqrt(1 - s_i) * u_i

with ``d_domain`` one direction per domain, ``g_i`` the normalised sum of the concept's trait
vectors (an identity's visual traits; an object's category), ``u_i`` its own direction, and the
shared share ``s_i = s * U(1 - r, 1 + r)`` (``s`` = `KnowledgeConfig.shared`, the calibrated knob;
``s = 0`` gives the independent vectors of the world before calibration). Pairwise cosines are
about ``sqrt(s_i s_j) ((1 - tau) + tau cos(g_i, g_j))``.

This module holds the geometry's settings and constants, torch-free (the Snakefile reads them while it
builds the DAG); `geometry` builds the vectors and measures the statistics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from resurgence.config import settings_from_dict

# Object categories (CIFAR-100's superclasses, merged to the world's 45 objects): the object
# analogue of identities' shared traits.
OBJECT_CATEGORIES: dict[str, tuple[str, ...]] = {
    "vehicle": ("airplane", "automobile", "ship", "truck", "motorcycle", "streetcar", "tank", "rocket"),
    "land animal": (
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "bee",
        "hamster",
        "tiger",
        "turtle",
        "elephant",
        "raccoon",
    ),
    "aquatic animal": ("trout", "ray", "lobster", "aquarium fish", "crab", "seal", "flatfish", "shark"),
    "plant": (
        "rose",
        "oak tree",
        "tulip",
        "pine tree",
        "willow tree",
        "mushroom",
        "maple tree",
        "orange",
        "sunflower",
        "orchid",
    ),
    "place": ("plain", "mountain", "house", "cloud", "road"),
    "household": ("bowl", "cup"),
}
CATEGORY_OF: dict[str, str] = {o: c for c, objs in OBJECT_CATEGORIES.items() for o in objs}

# The paper's App. C.2 ranges of the minimum CLIP cosine similarity (SD v1.4's CLIP ViT-L/14).
PAPER_MIN_COSINE: dict[str, tuple[float, float]] = {"identity": (0.17, 0.80), "object": (0.68, 0.84)}
# The App. C.2 erase sets the statistic is computed for (task names of config.yaml) and the world's
# knowledge dimension (the toy text encoder's width: `models.pipeline.TOY`).
CALIBRATION_TASKS: dict[str, str] = {"identity": "identity_10", "object": "object_5"}
KNOWLEDGE_DIM = 384
# The vectors' seed is the world's plus this (the offset the text encoder's knowledge always used).
SEED_OFFSET = 3


@dataclass(frozen=True)
class KnowledgeConfig:
    """The shared structure of concept knowledge (module docstring); part of the trained models' configs."""

    # s: mean share of a concept's knowledge shared with its domain (0 = independent vectors). Calibrated
    # on App. C.2's statistic alone, before any resurgence was measured: the value whose trained CLIP's
    # statistic lies inside both paper ranges for most random erase sets (tools/geometry_scan.py --splits;
    # docs/geometry_calibration.md).
    shared: float = 0.845
    spread: float = 0.05  # r: the shared share varies per concept by +-r (relative), as names differ in fame
    trait_share: float = 0.1  # tau: of the shared part, the share in trait / category components

    def __post_init__(self) -> None:
        for key, lo, hi in (("shared", 0.0, 1.0), ("spread", 0.0, 1.0), ("trait_share", 0.0, 1.0)):
            v = getattr(self, key)
            if not lo <= v < hi:
                raise ValueError(f"toyworld knowledge {key} must lie in [{lo}, {hi}), got {v}")
        if self.shared * (1 + self.spread) >= 1:
            raise ValueError(
                f"toyworld knowledge shared * (1 + spread) must be < 1 (every concept keeps an own part), "
                f"got shared={self.shared}, spread={self.spread}"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> KnowledgeConfig:
        return settings_from_dict(cls, d, "toyworld knowledge keys")
