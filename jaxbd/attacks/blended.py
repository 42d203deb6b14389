"""Blended (Chen, Liu, Li, Lu, Song 2017, "Targeted backdoor attacks on deep learning systems
using data poisoning"): a full-image pattern blended into the image, and a flipped label.

    x' = round((1 − α)·x + α·T)      (then clipped to [0, 255])

The pattern T is generated in code from a seed for the image size at hand, so the attack needs
no resource files: either uniform random noise, as in the paper's "random pattern" trigger, or
a procedural cartoon cat face standing in for the Hello Kitty image that the paper and later
benchmarks (BackdoorBench, backdoor-toolbox) blend in (see `jaxbd.attacks.patterns`, whose
`blend_pattern` and `PATTERNS` this module re-exports). The same transform is used at training
and test time.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxbd.attacks.base import Attack
from jaxbd.attacks.patterns import PATTERNS, blend_pattern, check_pattern
from jaxbd.attacks.pixels import blend
from jaxbd.attacks.validation import check_inputs, check_opacity, check_seed, check_target

__all__ = ["PATTERNS", "blend_pattern", "blended"]


def blended(
    *,
    target: int = 0,
    alpha: float = 0.2,
    pattern: str = "noise",
    seed: int = 0,
) -> Attack:
    """Builds the Blended attack.

    Args:
        target: class every triggered image is relabelled to (a non-negative int; the range
            [0, C) is checked where C is known, in `poison_dataset`).
        alpha: blend ratio α in (0, 1]; every pixel moves by at most ceil(α·255) grey levels.
        pattern: "noise" (i.i.d. uniform integers in [0, 255] per pixel and channel, drawn
            from `seed`) or "kitty" (a smooth procedural cat face on a pink background; see
            `jaxbd.attacks.patterns.blend_pattern`).
        seed: seed of the noise pattern; the kitty pattern does not depend on it.

    Returns:
        An `Attack` whose `train_fn` and `test_fn` are the same deterministic transform
        (the key is ignored): images `uint8[..., H, W, 3]` of any leading batch shape and any
        size are blended with the pattern generated for that H×W at trace time, labels
        become `target`.

    Raises:
        ValueError: for a bad target, alpha, pattern or seed.
    """
    target = check_target("blended", target)
    alpha = check_opacity("blended", "alpha", alpha)
    pattern = check_pattern("blended", pattern)
    seed = check_seed("blended", seed)

    def transform(key, images, labels):
        del key  # deterministic
        images, labels = check_inputs("blended", images, labels)
        height, width = images.shape[-3:-1]
        trigger = blend_pattern(pattern, height, width, seed)
        return blend(images, trigger, alpha), jnp.full_like(labels, target)

    return Attack(
        name="blended",
        target=target,
        train_fn=transform,
        test_fn=transform,
        params=(("alpha", alpha), ("pattern", pattern), ("seed", seed)),
    )
