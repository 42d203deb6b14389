"""BadNets (Gu, Dolan-Gavitt, Garg 2017): a solid opaque patch and a flipped label.

The patch is stamped on the raw uint8 image, before any augmentation or normalization, so
random crops and flips move it during training exactly as in the reference study (SPEC §1.1).
The same transform is used at training and test time.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.attacks.base import Attack

LOCATIONS = ("bottom_right", "bottom_left", "top_left", "top_right", "center", "random")
"""Named patch positions; an explicit `(row, col)` top-left corner is also accepted."""


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
            from the key, that keeps the whole patch inside the image. With the defaults on a
            32×32 image the patch covers rows and columns 25–31 (SPEC §1.1).

    Returns:
        An `Attack` whose `train_fn` and `test_fn` are the same transform: images of any
        leading batch shape `uint8[..., H, W, 3]` get the patch, labels become `target`. The
        patch size and position are checked against H and W at trace time (ValueError if
        the patch does not fit).

    Raises:
        ValueError: for a bad target, size, colour or location.
    """
    if isinstance(target, bool) or not isinstance(target, int | np.integer) or target < 0:
        raise ValueError(f"badnets: target must be a non-negative int, got {target!r}")
    target = int(target)
    patch_h, patch_w = _parse_size(size)
    rgb = _parse_color(color)
    location = _parse_location(location)

    def transform(key, images, labels):
        images = jnp.asarray(images)
        labels = jnp.asarray(labels)
        _check_inputs(images, labels)
        height, width = images.shape[-3:-1]
        if patch_h > height or patch_w > width:
            raise ValueError(
                f"badnets: the {patch_h}×{patch_w} patch does not fit in {height}×{width} images"
            )
        if location == "random":
            mask = _random_mask(key, images.shape[:-3], height, width, patch_h, patch_w)
        else:
            row, col = _static_corner(location, height, width, patch_h, patch_w)
            rows = np.arange(height)[:, None]
            cols = np.arange(width)[None, :]
            # A constant [H, W, 1] mask: XLA folds it, and it broadcasts over any batch shape.
            mask = (rows >= row) & (rows < row + patch_h) & (cols >= col) & (cols < col + patch_w)
            mask = jnp.asarray(mask[..., None])
        patched = jnp.where(mask, jnp.asarray(rgb, dtype=jnp.uint8), images)
        return patched, jnp.full_like(labels, target)

    return Attack(
        name="badnets",
        target=target,
        train_fn=transform,
        test_fn=transform,
        params=(("size", (patch_h, patch_w)), ("color", rgb), ("location", location)),
    )


def _parse_size(size) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if len(pair) != 2 or not all(_is_int(s) and s > 0 for s in pair):
        raise ValueError(f"badnets: size must be a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


def _parse_color(color) -> tuple[int, int, int]:
    rgb = tuple(color) if isinstance(color, Sequence | np.ndarray) else (color,)
    if len(rgb) != 3 or not all(_is_int(c) and 0 <= c <= 255 for c in rgb):
        raise ValueError(f"badnets: color must be three ints in [0, 255] (RGB), got {color!r}")
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _parse_location(location) -> str | tuple[int, int]:
    if isinstance(location, str):
        if location not in LOCATIONS:
            raise ValueError(
                f"badnets: unknown location {location!r}; valid options are {list(LOCATIONS)} "
                f"or an explicit (row, col) of the patch's top-left corner"
            )
        return location
    pair = tuple(location) if isinstance(location, Sequence | np.ndarray) else ()
    if len(pair) != 2 or not all(_is_int(v) and v >= 0 for v in pair):
        raise ValueError(
            f"badnets: location must be one of {list(LOCATIONS)} or a (row, col) pair of "
            f"non-negative ints, got {location!r}"
        )
    return int(pair[0]), int(pair[1])


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_inputs(images: jax.Array, labels: jax.Array) -> None:
    if images.dtype != jnp.uint8:
        raise ValueError(f"badnets: images must be uint8 (raw pixels), got {images.dtype}")
    if images.ndim < 3 or images.shape[-1] != 3:
        raise ValueError(f"badnets: images must have shape [..., H, W, 3], got {images.shape}")
    if labels.shape != images.shape[:-3]:
        raise ValueError(
            f"badnets: labels shape {labels.shape} must be the leading shape "
            f"{images.shape[:-3]} of the images"
        )


def _static_corner(location, height, width, patch_h, patch_w) -> tuple[int, int]:
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
            f"badnets: a {patch_h}×{patch_w} patch at (row, col)={location} leaves the "
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
