"""Checks of attack hyper-parameters and of the images and labels an attack is given.

Every attack factory validates its hyper-parameters once, when it is built, and its transforms
check their inputs at trace time (shapes and dtypes are static, so the checks cost nothing
inside `jax.jit`). The checks shared by several attacks live here; each takes the attack's
registry name, which every error message starts with ("badnets: target must be ..."), so the
user sees the attack they configured.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A finite int or float (not a bool)."""
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def check_target(attack: str, target) -> int:
    """Validates a target class (a non-negative int; [0, C) is checked by `poison_dataset`,
    where the class count C is known)."""
    if not is_int(target) or target < 0:
        raise ValueError(f"{attack}: target must be a non-negative int, got {target!r}")
    return int(target)


def check_seed(attack: str, seed) -> int:
    """Validates the seed of a trigger generated in code (a non-negative int)."""
    if not is_int(seed) or seed < 0:
        raise ValueError(f"{attack}: seed must be a non-negative int, got {seed!r}")
    return int(seed)


def check_positive_int(attack: str, name: str, value) -> int:
    """Validates a count such as a number of patches or steps (an int ≥ 1)."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{attack}: {name} must be a positive int, got {value!r}")
    return int(value)


def check_opacity(attack: str, name: str, value) -> float:
    """Validates a blend opacity, a number in (0, 1] (0 would blend in nothing)."""
    if not is_real(value) or not 0 < value <= 1:
        raise ValueError(f"{attack}: {name} must be a number in (0, 1], got {value!r}")
    return float(value)


def check_probability(attack: str, name: str, value) -> float:
    """Validates a per-example or per-piece probability in [0, 1).

    1 is excluded: the probabilities checked here drop trigger pieces or keep true labels,
    and at 1 every piece would be dropped, or no image relabelled, leaving no backdoor to
    learn.
    """
    if not is_real(value) or not 0 <= value < 1:
        raise ValueError(f"{attack}: {name} must be a probability in [0, 1), got {value!r}")
    return float(value)


def check_inputs(attack: str, images, labels) -> tuple[jax.Array, jax.Array]:
    """Trace-time checks of an attack's inputs.

    Args:
        attack: the attack's name, for error messages.
        images: uint8[..., H, W, 3] raw pixels (array-like).
        labels: int[...], the leading shape of `images` (array-like).

    Returns:
        `(images, labels)` as `jax.Array`s.

    Raises:
        ValueError: for images that are not uint8, not `[..., H, W, 3]`, or labels whose
            shape is not the images' leading shape.
    """
    images = jnp.asarray(images)
    labels = jnp.asarray(labels)
    if images.dtype != jnp.uint8:
        raise ValueError(f"{attack}: images must be uint8 (raw pixels), got {images.dtype}")
    if images.ndim < 3 or images.shape[-1] != 3:
        raise ValueError(f"{attack}: images must have shape [..., H, W, 3], got {images.shape}")
    if labels.shape != images.shape[:-3]:
        raise ValueError(
            f"{attack}: labels shape {labels.shape} must be the leading shape "
            f"{images.shape[:-3]} of the images"
        )
    return images, labels
