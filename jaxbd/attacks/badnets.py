"""BadNets (Gu, Dolan-Gavitt, Garg 2017): a solid opaque patch and a flipped label.

The patch is stamped on the raw uint8 image, before any augmentation or normalization, so
random crops and flips move it during training as they move the image content. The same
transform is used at training and test time. The patch itself (options, validation, stamping)
is `jaxbd.attacks.patch`, shared with the other attacks that use the BadNets trigger.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from jaxbd.attacks.base import Attack
from jaxbd.attacks.patch import LOCATIONS, patch_trigger
from jaxbd.attacks.validation import check_target

__all__ = ["LOCATIONS", "badnets"]


def badnets(
    *,
    target: int = 0,
    size: int | Sequence[int] = 7,
    color: Sequence[int] = (255, 0, 0),
    location: str | Sequence[int] = "bottom_right",
) -> Attack:
    """Builds the BadNets attack.

    Args:
        target: class every triggered image is relabelled to (a non-negative int; the range
            [0, C) is checked where C is known, in `poison_dataset`).
        size: patch side `s` (an `s×s` square) or `(height, width)`.
        color: RGB patch colour, three ints in [0, 255].
        location: where the patch goes. A corner ("bottom_right", "bottom_left", "top_left",
            "top_right"), "center" (rounded towards the top-left), an explicit `(row, col)`
            of the patch's top-left pixel, or "random": a uniform position per image, drawn
            from the key, that keeps the whole patch inside the image. The defaults are the
            usual BadNets trigger, a 7×7 red square in the bottom-right corner: on a 32×32
            image it covers rows and columns 25–31.

    Returns:
        An `Attack` whose `train_fn` and `test_fn` are the same transform: images of any
        leading batch shape `uint8[..., H, W, 3]` get the patch, labels become `target`. The
        patch size and position are checked against H and W at trace time (ValueError if
        the patch does not fit).

    Raises:
        ValueError: for a bad target, size, colour or location.
    """
    target = check_target("badnets", target)
    stamp, patch_params = patch_trigger("badnets", size=size, color=color, location=location)

    def transform(key, images, labels):
        labels = jnp.asarray(labels)
        return stamp(key, images, labels), jnp.full_like(labels, target)

    return Attack(
        name="badnets",
        target=target,
        train_fn=transform,
        test_fn=transform,
        params=patch_params,
    )
