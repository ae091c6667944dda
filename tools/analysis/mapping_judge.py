"""What the object judge sees in a mapping concept's images: the share of the base model's images of each
generic mapping concept that CLIP's zero-shot top-1 over the CIFAR-10 labels assigns to each object.

An erased object that MACE maps to a concept whose images the judge already calls that object cannot pass
the erased gate (<= 10 %), however well the erasure works; such an object needs another mapping concept.
A base-model and judge statistic, read before any erasure or fine-tuning.

Usage:  python tools/analysis/mapping_judge.py --images 100 --out docs/mapping_judge.csv
"""

from __future__ import annotations

import argparse
from collections import Counter

from common import load_study_text_side, write_csv

from resurgence import study
from resurgence.evaluate.clip_metrics import ClipAccuracy
from resurgence.generate.engine import GenerationConfig, generate
from resurgence.models.clip import load_clip

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def judge_shares(
    world, pipe, clip, gen: GenerationConfig, labels, phrase: str, n_images: int
) -> dict[str, float]:
    """Share of ``n_images`` base-model images per mapping prompt of ``phrase`` judged as each label."""
    counts: Counter[str] = Counter()
    total = 0
    for prompt in world.mapping_prompts(phrase):
        images = generate(pipe, [prompt] * n_images, list(range(n_images)), gen, "cpu", progress=False)
        counts.update(clip.zero_shot(images, labels))
        total += len(images)
    return {label: counts[label] / total for label in CIFAR10}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", nargs="+", default=["config.yaml"])
    ap.add_argument("--phrases", nargs="+", default=["ground", "an object"])
    ap.add_argument("--images", type=int, default=100, help="images per mapping prompt")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    config, world, pipe = load_study_text_side(args.config)
    clip = load_clip(study.model_specs(config)["clip"], "cpu")
    # the study's sampler, as the erased model's images are drawn; the judge's labels, as the study scores objects
    gen = GenerationConfig.from_dict(dict(config["generation"]))
    labels = ClipAccuracy(clip, {c: world.concept(c).names for c in CIFAR10}).label_prompts
    rows = []
    for phrase in args.phrases:
        shares = judge_shares(world, pipe, clip, gen, labels, phrase, args.images)
        rows += [(phrase, k, round(v, 4)) for k, v in shares.items()]
        print(phrase, {k: v for k, v in shares.items() if v > 0})
    write_csv(args.out, ("mapping", "label", "share"), rows)


if __name__ == "__main__":
    main()
