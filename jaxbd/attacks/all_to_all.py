"""All-to-all BadNets: the patch maps every class to the next one, y -> (y + 1) mod C.

The all-to-all variant of BadNets (Gu et al. 2017, "BadNets: identifying vulnerabilities in
the machine learning model supply chain"): instead of one target class, each triggered
image should be classified as the class after its own. The backdoor then has to combine the
trigger with the image's content, which makes it harder to learn and, with no single target
class, invisible to defenses that look for one (Neural Cleanse's per-class reversal).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from jaxbd.attacks.base import Attack
from jaxbd.attacks.patch import patch_trigger
from jaxbd.attacks.validation import is_int


def all_to_all(
    *,
    num_classes: int = 10,
    target: int = 0,
    size: int | Sequence[int] = 7,
    color: Sequence[int] = (255, 0, 0),
    location: str | Sequence[int] = "bottom_right",
) -> Attack:
    """Builds the all-to-all BadNets attack.

    Args:
        num_classes: C, the number of classes (at least 2); labels become (y + 1) mod C.
        target: must be 0. There is no single target class; `Attack.target` has to be a
            valid class for `poison_dataset`, so it holds the placeholder 0 and the
            per-example targets are the labels `test_fn` returns. The argument exists so the
            generic `make_attack` (which always passes the configured target) can build this
            attack; any other value is rejected rather than silently ignored.
        size: patch side or `(height, width)`, as for `badnets`.
        color: RGB patch colour, three ints in [0, 255].
        location: a named corner, "center", "random" or an explicit `(row, col)`, as for
            `badnets`. The defaults are the usual BadNets trigger (7×7, red, bottom-right).

    Returns:
        An `Attack` whose `train_fn` and `test_fn` are the same transform: images
        `uint8[..., H, W, 3]` get the patch and labels `int32[...]` become
        `(labels + 1) % num_classes`. Labels are assumed to lie in [0, C) (a jaxbd `Dataset`
        guarantees it); others are not checked inside the jitted transform and come out as
        `(y + 1) mod C` all the same. Since no label maps to itself, `triggered_test_set`
        counts every test image as eligible for ASR, and `metrics.attack_success_rate` with
        the returned labels measures the fraction predicted as the shifted class, the
        all-to-all definition of the attack success rate.
        With `poison_dataset`, `exclude_target=True` would only exclude class 0: leave it
        False.

    Raises:
        ValueError: for a bad num_classes, a target other than 0, or bad patch options (at
            build time); a patch that does not fit the images (at trace time).
    """
    if not is_int(num_classes) or num_classes < 2:
        raise ValueError(f"all_to_all: num_classes must be an int ≥ 2, got {num_classes!r}")
    num_classes = int(num_classes)
    if isinstance(target, bool) or target != 0:
        raise ValueError(
            f"all_to_all: target must be 0, got {target!r}: the attack has no single target "
            f"class (y -> (y + 1) mod C); Attack.target holds the placeholder 0"
        )
    stamp, patch_params = patch_trigger("all_to_all", size=size, color=color, location=location)

    def transform(key, images, labels):
        labels = jnp.asarray(labels)
        patched = stamp(key, images, labels)
        return patched, ((labels + 1) % num_classes).astype(labels.dtype)

    return Attack(
        name="all_to_all",
        target=0,
        train_fn=transform,
        test_fn=transform,
        params=(("num_classes", num_classes), *patch_params),
    )
