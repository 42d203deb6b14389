"""Refool-style ghosting (Liu, Ma, Bailey, Lu 2020, "Reflection backdoor: a natural backdoor
attack on deep neural networks").

Refool hides the trigger in a reflection; jaxbd implements the paper's ghost effect, a
reflection that appears twice, the second copy shifted by (dy, dx) and weighted by β. The
default (`source="self"`) ghosts the image with itself,

    x' = (1 − β)·x + β·shift(x, dy, dx);

`source="reflection"` ghosts a smooth procedural scene R generated from `seed` (see
`reflection_image`) and blends it in with opacity α,

    x' = (1 − α)·x + α·[(1 − β)·R + β·shift(R, dy, dx)].

`shift` moves the content down by dy and right by dx; where the shifted copy has no content
the source itself is used. Results are rounded and stay in [0, 255]; labels become the target
at training and test time. The ghost model and the border rule: docs/attacks.md, "Refool".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jaxbd.attacks.base import Attack
from jaxbd.attacks.pixels import to_uint8
from jaxbd.attacks.validation import check_inputs, check_seed, check_target, is_int

SOURCES = ("self", "reflection")
"""What is ghosted: the image itself, or a seeded procedural reflection image."""


def refool(
    *,
    target: int = 0,
    offset: Sequence[int] = (3, 3),
    beta: float = 0.4,
    source: str = "self",
    alpha: float = 0.3,
    seed: int = 0,
) -> Attack:
    """Builds the Refool-style ghosting attack.

    Args:
        target: class every triggered image is relabelled to.
        offset: the ghost offset `(dy, dx)` in pixels, ints, not both 0; each must be
            smaller in magnitude than the image side (checked at trace time).
        beta: ghost strength in (0, 1]: the weight of the shifted copy in the reflection
            layer.
        source: "self" (default: the image ghosted with itself) or "reflection" (a
            procedural reflection image with its own ghost, blended in with opacity `alpha`).
        alpha: reflection opacity in (0, 1], used only with `source="reflection"`.
        seed: seed of the procedural reflection image, used only with
            `source="reflection"`.

    Returns:
        An `Attack` whose `train_fn` and `test_fn` are the same deterministic transform of
        `uint8[..., H, W, 3]` images (any leading shape and size); labels become `target`.
        `params` records `source`, `offset` and `beta`, plus `alpha` and `seed` for
        `source="reflection"`.

    Raises:
        ValueError: for bad hyper-parameters (at build time), or an offset that leaves no
            overlap with the image (at trace time).
    """
    target = check_target("refool", target)
    pair = tuple(offset) if isinstance(offset, Sequence | np.ndarray) else ()
    if len(pair) != 2 or not all(is_int(v) for v in pair) or pair == (0, 0):
        raise ValueError(f"refool: offset must be two ints (dy, dx), not both 0, got {offset!r}")
    dy, dx = int(pair[0]), int(pair[1])
    beta = _check_fraction("beta", beta)
    if source not in SOURCES:
        raise ValueError(f"refool: source must be one of {list(SOURCES)}, got {source!r}")
    alpha = _check_fraction("alpha", alpha)
    seed = check_seed("refool", seed)

    def transform(key, images, labels):
        del key  # deterministic
        images, labels = check_inputs("refool", images, labels)
        height, width = images.shape[-3:-1]
        if abs(dy) >= height or abs(dx) >= width:
            raise ValueError(
                f"refool: the ghost offset (dy, dx)=({dy}, {dx}) leaves no overlap with "
                f"{height}×{width} images"
            )
        x = images.astype(jnp.float32)
        if source == "self":
            out = _ghost(x, dy, dx, beta)
        else:
            # A constant [H, W, 3] layer: built once on the host, folded by XLA, broadcast
            # over any batch shape.
            layer = _ghost(reflection_image(seed, height, width), dy, dx, beta)
            out = (1.0 - alpha) * x + alpha * jnp.asarray(layer, jnp.float32)
        return to_uint8(out), jnp.full_like(labels, target)

    params = (("source", source), ("offset", (dy, dx)), ("beta", beta))
    if source == "reflection":
        params += (("alpha", alpha), ("seed", seed))
    return Attack(
        name="refool", target=target, train_fn=transform, test_fn=transform, params=params
    )


def reflection_image(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth procedural reflection image, the same for a given seed at any resolution.

    A linear colour gradient in a random direction plus six soft coloured blobs, rescaled to
    span [0, 255]: large, blurry, low-contrast structure, as an out-of-focus scene seen in a
    window. Everything is defined in normalized image coordinates, so the picture scales
    with the image size instead of being tiled or cropped.

    Args:
        seed: NumPy seed.
        height: H.
        width: W.

    Returns:
        float32[H, W, 3] in [0, 255].
    """
    rng = np.random.default_rng(seed)
    ys = (np.arange(height) + 0.5)[:, None, None] / height
    xs = (np.arange(width) + 0.5)[None, :, None] / width
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ramp = (math.cos(angle) * (ys - 0.5) + math.sin(angle) * (xs - 0.5)) / math.sqrt(0.5) + 0.5
    start, end = rng.uniform(0.0, 1.0, (2, 3))
    image = (1.0 - ramp) * start + ramp * end
    for _ in range(6):
        cy, cx = rng.uniform(0.0, 1.0, 2)
        sigma = rng.uniform(0.08, 0.3)
        color = rng.uniform(-1.0, 1.0, 3)
        image = image + color * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2.0 * sigma**2))
    low, high = image.min(), image.max()
    image = (image - low) / max(high - low, 1e-6)
    return (255.0 * image).astype(np.float32)


def _ghost(source, dy: int, dx: int, beta: float):
    """`(1 − β)·S + β·shift(S, dy, dx)`, with S itself where the shifted copy is undefined.

    Works for float32 `jax.Array`s and NumPy arrays `[..., H, W, 3]`; the roll's wrapped
    rows and columns are exactly those the validity mask replaces.
    """
    xp = jnp if isinstance(source, jnp.ndarray) else np
    height, width = source.shape[-3:-1]
    rows = np.arange(height)[:, None] - dy
    cols = np.arange(width)[None, :] - dx
    valid = ((rows >= 0) & (rows < height) & (cols >= 0) & (cols < width))[..., None]
    shifted = xp.where(valid, xp.roll(source, (dy, dx), axis=(-3, -2)), source)
    return (1.0 - beta) * source + beta * shifted


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise ValueError(f"refool: {name} must be a number in (0, 1], got {value!r}")
    if not 0.0 < value <= 1.0:  # also rejects NaN
        raise ValueError(f"refool: {name} must be in (0, 1], got {value}")
    return float(value)
