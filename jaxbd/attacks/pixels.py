"""Pixel arithmetic shared by the attacks: back to uint8, blending, additive patterns.

Attacks compute triggered images in float32 from the raw uint8 pixels and round the result
back, so every attack's output is again a valid uint8 image, whatever the trigger.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def to_uint8(images: jax.Array) -> jax.Array:
    """Rounds float pixel values to the nearest integer (ties to even) and clips to uint8."""
    return jnp.clip(jnp.round(images), 0, 255).astype(jnp.uint8)


def blend(images: jax.Array, trigger: ArrayLike, opacity: float) -> jax.Array:
    """`round((1 − o)·x + o·T)`, clipped to uint8: the trigger T blended in at opacity o.

    Args:
        images: uint8[..., H, W, 3].
        trigger: float[H, W, 3] (or broadcastable to the images) in [0, 255].
        opacity: o in (0, 1].

    Returns:
        uint8 images of the input shape.
    """
    return to_uint8((1.0 - opacity) * images.astype(jnp.float32) + opacity * trigger)


def add_pattern(images: jax.Array, pattern: ArrayLike) -> jax.Array:
    """`round(x + P)`, clipped to uint8: an additive trigger P in grey levels.

    Args:
        images: uint8[..., H, W, 3].
        pattern: float, broadcastable to the images (e.g. [H, W, 3] or [W, 1]).

    Returns:
        uint8 images of the input shape.
    """
    return to_uint8(images.astype(jnp.float32) + pattern)


def where_images(condition: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-image choice: `x[i]` where `condition[i]`, else `y[i]`.

    Args:
        condition: bool[...], the images' leading shape.
        x: [..., H, W, C].
        y: [..., H, W, C].
    """
    return jnp.where(condition[..., None, None, None], x, y)
