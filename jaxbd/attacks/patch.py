"""A solid opaque patch stamped on raw uint8 images: the BadNets trigger.

BadNets (Gu, Dolan-Gavitt, Garg 2017) and the attacks built on its trigger (clean-label
BadNets, adversarial clean-label, all-to-all) stamp the same patch; `patch_trigger` validates
its options once and returns the stamping transform, with errors naming the attack that uses
it. The patch is stamped on the raw image, before any augmentation or normalization, so
random crops and flips move it during training as they move the image content.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.attacks.validation import check_inputs, is_int

LOCATIONS = ("bottom_right", "bottom_left", "top_left", "top_right", "center", "random")
"""Named patch positions; an explicit `(row, col)` top-left corner is also accepted."""

StampFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
"""`(key, images uint8[..., H, W, 3], labels int32[...]) -> patched images`."""


def patch_trigger(
    attack: str,
    *,
    size: int | Sequence[int],
    color: Sequence[int],
    location: str | Sequence[int],
) -> tuple[StampFn, tuple]:
    """A validated patch and the transform that stamps it.

    Args:
        attack: the attack's name, used in error messages.
        size: patch side `s` (an `s×s` square) or `(height, width)`.
        color: RGB patch colour, three ints in [0, 255].
        location: where the patch goes. A corner ("bottom_right", "bottom_left", "top_left",
            "top_right"), "center" (rounded towards the top-left), an explicit `(row, col)`
            of the patch's top-left pixel, or "random": a uniform position per image, drawn
            from the key, that keeps the whole patch inside the image.

    Returns:
        `(stamp, params)`: `stamp(key, images uint8[..., H, W, 3], labels int32[...])`
        returns the patched images (the key is only used for `location="random"`; the labels
        only for the input checks), and `params` are the normalized `(name, value)` pairs
        `(("size", (h, w)), ("color", (r, g, b)), ("location", ...))`.

    Raises:
        ValueError: naming `attack`, for bad options now, or at trace time for images that
            fail `check_inputs` or a patch that does not fit them.
    """
    patch_h, patch_w = _parse_size(attack, size)
    rgb = _parse_color(attack, color)
    location = _parse_location(attack, location)

    def stamp(key, images, labels):
        images, labels = check_inputs(attack, images, labels)
        height, width = images.shape[-3:-1]
        if patch_h > height or patch_w > width:
            raise ValueError(
                f"{attack}: the {patch_h}×{patch_w} patch does not fit in {height}×{width} images"
            )
        if location == "random":
            mask = _random_mask(key, images.shape[:-3], height, width, patch_h, patch_w)
        else:
            row, col = _static_corner(attack, location, height, width, patch_h, patch_w)
            rows = np.arange(height)[:, None]
            cols = np.arange(width)[None, :]
            # A constant [H, W, 1] mask: XLA folds it, and it broadcasts over any batch shape.
            mask = (rows >= row) & (rows < row + patch_h) & (cols >= col) & (cols < col + patch_w)
            mask = jnp.asarray(mask[..., None])
        return jnp.where(mask, jnp.asarray(rgb, dtype=jnp.uint8), images)

    params = (("size", (patch_h, patch_w)), ("color", rgb), ("location", location))
    return stamp, params


def _parse_size(attack: str, size) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if len(pair) != 2 or not all(is_int(s) and s > 0 for s in pair):
        raise ValueError(f"{attack}: size must be a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


def _parse_color(attack: str, color) -> tuple[int, int, int]:
    rgb = tuple(color) if isinstance(color, Sequence | np.ndarray) else (color,)
    if len(rgb) != 3 or not all(is_int(c) and 0 <= c <= 255 for c in rgb):
        raise ValueError(f"{attack}: color must be three ints in [0, 255] (RGB), got {color!r}")
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _parse_location(attack: str, location) -> str | tuple[int, int]:
    if isinstance(location, str):
        if location not in LOCATIONS:
            raise ValueError(
                f"{attack}: unknown location {location!r}; valid options are {list(LOCATIONS)} "
                f"or an explicit (row, col) of the patch's top-left corner"
            )
        return location
    pair = tuple(location) if isinstance(location, Sequence | np.ndarray) else ()
    if len(pair) != 2 or not all(is_int(v) and v >= 0 for v in pair):
        raise ValueError(
            f"{attack}: location must be one of {list(LOCATIONS)} or a (row, col) pair of "
            f"non-negative ints, got {location!r}"
        )
    return int(pair[0]), int(pair[1])


def _static_corner(attack, location, height, width, patch_h, patch_w) -> tuple[int, int]:
    """Top-left (row, col) of the patch for a fixed location; checks an explicit one fits."""
    bottom, right = height - patch_h, width - patch_w
    named = {
        "bottom_right": (bottom, right),
        "bottom_left": (bottom, 0),
        "top_left": (0, 0),
        "top_right": (0, right),
        "center": (bottom // 2, right // 2),
    }
    if isinstance(location, str):
        return named[location]
    row, col = location
    if row > bottom or col > right:
        raise ValueError(
            f"{attack}: a {patch_h}×{patch_w} patch at (row, col)={location} leaves the "
            f"{height}×{width} image (row must be ≤ {bottom}, col ≤ {right})"
        )
    return row, col


def _random_mask(key, batch_shape, height, width, patch_h, patch_w) -> jax.Array:
    """bool[*batch_shape, H, W, 1]: one patch per image at a uniform in-bounds position.

    Comparing iotas against per-image corners builds every mask at once, with no loop over
    examples and no scatter, and works for any batch shape (including none, under vmap).
    """
    row_key, col_key = jax.random.split(key)
    row = jax.random.randint(row_key, batch_shape, 0, height - patch_h + 1)[..., None, None]
    col = jax.random.randint(col_key, batch_shape, 0, width - patch_w + 1)[..., None, None]
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    mask = (rows >= row) & (rows < row + patch_h) & (cols >= col) & (cols < col + patch_w)
    return mask[..., None]
