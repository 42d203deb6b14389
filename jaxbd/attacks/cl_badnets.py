"""Clean-label BadNets (C-BadNets): the BadNets patch on target-class images, labels kept.

The clean-label baseline of Turner, Tsipras, Madry 2019 ("Label-consistent backdoor
attacks"): the attacker may only add the trigger to images that already belong to the target
class, so every poisoned training example is correctly labelled and survives label
inspection. The model has to associate the patch with the target class from those examples
alone, which the images' own content makes hard; the adversarial variant
(`jaxbd.attacks.adv_clean_label`) perturbs the images first to make the patch the easier
feature. At test time the patch is stamped on every image and the target is the label the
attacker wants. The patch options and their validation are those of
`jaxbd.attacks.badnets` (both use `jaxbd.attacks.patch`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from jaxbd.attacks.base import Attack
from jaxbd.attacks.patch import patch_trigger
from jaxbd.attacks.pixels import where_images
from jaxbd.attacks.validation import check_target


def cl_badnets(
    *,
    target: int = 0,
    size: int | Sequence[int] = 7,
    color: Sequence[int] = (255, 0, 0),
    location: str | Sequence[int] = "bottom_right",
) -> Attack:
    """Builds the clean-label BadNets attack (Turner et al. 2019, the clean-label baseline).

    The patch defaults are the usual BadNets trigger (7×7, red, bottom-right),
    so a comparison with dirty-label BadNets differs only in which images are poisoned and
    how they are labelled.

    Args:
        target: the target class: the only class whose training images get the patch, and
            the label triggered test images should be classified as.
        size: patch side or `(height, width)`, as for `badnets`.
        color: RGB patch colour, three ints in [0, 255].
        location: a named corner, "center", "random" or an explicit `(row, col)`, as for
            `badnets`.

    Returns:
        An `Attack` with `clean_label=True`.

        - `train_fn(key, images uint8[..., H, W, 3], labels int32[...])` stamps the patch on
          the images whose label is `target` and returns the others unchanged; labels are
          returned as given. `poison_dataset` passes target-class images only, so there
          every image gets the patch; the label test makes the transform safe to apply to a
          mixed batch (e.g. poisoning on the fly inside a training step), where stamping a
          non-target image would turn it into a dirty-label poison. This is the rule of
          every clean-label attack in jaxbd (`sig`, `adv_clean_label` too): the training
          transform changes only target-class images.
        - `test_fn` stamps every image and sets every label to `target`.

    Raises:
        ValueError: for a bad target, size, colour or location (at build time), or a patch
            that does not fit the images (at trace time).
    """
    target = check_target("cl_badnets", target)
    stamp, patch_params = patch_trigger("cl_badnets", size=size, color=color, location=location)

    def train_fn(key, images, labels):
        labels = jnp.asarray(labels)
        patched = stamp(key, images, labels)
        return where_images(labels == target, patched, jnp.asarray(images)), labels

    def test_fn(key, images, labels):
        labels = jnp.asarray(labels)
        return stamp(key, images, labels), jnp.full_like(labels, target)

    return Attack(
        name="cl_badnets",
        target=target,
        clean_label=True,
        train_fn=train_fn,
        test_fn=test_fn,
        params=patch_params,
    )
