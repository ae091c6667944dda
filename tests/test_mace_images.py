"""MACE's training images drawn all together: each concept gets its own images, the same as drawn alone."""

from __future__ import annotations

import numpy as np

from resurgence.generate.engine import GenerationConfig
from resurgence.mace.erase import ImageRequest
from resurgence.mace.images import concept_image_source, even_batch, request_prompts

PROMPTS = {"Ann X": ("a photo of Ann X", "Ann X in a park"), "Bob Y": ("a sketch of Bob Y",)}
CFG = GenerationConfig(steps=2, batch_size=4)


def _arr(im) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


def test_request_prompts_cycle_the_concepts_prompts_with_consecutive_seeds():
    prompts, seeds = request_prompts(ImageRequest("Ann X", 3, 7), PROMPTS["Ann X"])
    assert prompts == ["a photo of Ann X", "Ann X in a park", "a photo of Ann X"] and seeds == [7, 8, 9]


def test_even_batches_are_the_fewest_and_padded_least():
    assert [even_batch(n, 64) for n in (8, 64, 65, 80, 800)] == [8, 64, 33, 40, 62]
    assert even_batch(5, 4) == 3 and even_batch(1, 4) == 1


def test_images_drawn_together_are_each_concepts_own_and_match_those_drawn_alone(pipe):
    asked = []

    def masks_of(name, images):
        asked.append((name, len(images)))
        return np.full((len(images), 16, 16), name == "Ann X")

    requests = [ImageRequest("Ann X", 3, 0), ImageRequest("Bob Y", 2, 10)]
    together = concept_image_source(pipe, PROMPTS, CFG, masks_of, "cpu", progress=False)(requests)
    assert asked == [("Ann X", 3), ("Bob Y", 2)]
    alone = concept_image_source(pipe, PROMPTS, CFG, masks_of, "cpu", together=False)(requests)
    assert [len(ims) for ims, _ in together] == [3, 2]
    assert together[0][1].all() and not together[1][1].any()  # each concept's masks with its images
    # 5 images at batch_size 4: two batches of 3, so Ann's 3 are one unpadded batch of 3, as drawn alone
    assert all(np.array_equal(_arr(x), _arr(y)) for x, y in zip(together[0][0], alone[0][0], strict=True))
    for (a, _), (b, _) in zip(together, alone, strict=True):
        for x, y in zip(a, b, strict=True):  # other batch sizes: float rounding at most
            assert np.abs(_arr(x) - _arr(y)).max() <= 2
    # the split is in order: Bob's first image is not Ann's last (other prompt and seed)
    assert np.abs(_arr(together[1][0][0]) - _arr(alone[0][0][2])).mean() > 1.0
