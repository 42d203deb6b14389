"""Full-image trigger patterns generated in code: random noise and a cartoon cat face.

Blended (Chen, Liu, Li, Lu, Song 2017) and Adaptive-Blend (Qi, Xie, Li, Mahloujifar, Mittal
2023) blend a full-image pattern T into the image. jaxbd ships no resource files, so T is
generated from a seed for the image size at hand: either uniform random noise, as in Chen et
al.'s "random pattern" trigger, or a procedural cartoon cat face standing in for the Hello
Kitty image that the paper and later benchmarks (BackdoorBench, backdoor-toolbox) blend in.
`blend_pattern` is public so that defenses or plots can use the very same T.
"""

from __future__ import annotations

import functools

import numpy as np

PATTERNS = ("noise", "kitty")
"""Trigger patterns `blend_pattern` can generate (for `blended` and `adaptive_blend`)."""

# Renders the cartoon on a grid this many times finer than the image and averages, so edges
# are anti-aliased (smooth) at every resolution, down to 8×8.
_SUPERSAMPLE = 4


def blend_pattern(pattern: str, height: int, width: int, seed: int = 0) -> np.ndarray:
    """The full-image trigger T for an H×W image, generated in code.

    Built with NumPy at trace time from static shapes, so under `jax.jit` it is a constant;
    results are cached per arguments (the returned array is read-only).

    Args:
        pattern: "noise": i.i.d. uniform integers in [0, 255] from `np.random.default_rng(seed)`
            (a different H×W gives a different noise image, not a resized one). "kitty": a
            cartoon cat face (white head with dark outline, ears, black eyes, yellow nose,
            whiskers, red bow) on a soft pink gradient, drawn in resolution-independent
            coordinates and anti-aliased by supersampling, so it is the same picture at every
            size and smooth rather than noisy; `seed` is ignored.
        height: H, at least 1.
        width: W, at least 1.
        seed: non-negative int, for "noise".

    Returns:
        float32[H, W, 3] with values in [0, 255].

    Raises:
        ValueError: for a pattern not in `PATTERNS`.
    """
    check_pattern("blended", pattern)
    return _cached_pattern(pattern, int(height), int(width), int(seed) if pattern == "noise" else 0)


@functools.lru_cache(maxsize=64)
def _cached_pattern(pattern: str, height: int, width: int, seed: int) -> np.ndarray:
    if pattern == "noise":
        rng = np.random.default_rng(seed)
        trigger = rng.integers(0, 256, size=(height, width, 3)).astype(np.float32)
    else:
        trigger = _render_kitty(height, width)
    trigger.setflags(write=False)
    return trigger


def _render_kitty(height: int, width: int) -> np.ndarray:
    """float32[H, W, 3]: the cartoon cat, painted layer by layer on a supersampled grid.

    Shapes are given in normalized coordinates (x across the width, y down the height, both
    in [0, 1]) as signed distances (negative inside), so the drawing does not depend on H, W.
    """
    ss = _SUPERSAMPLE
    y = (np.arange(height * ss) + 0.5) / (height * ss)
    x = (np.arange(width * ss) + 0.5) / (width * ss)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    p = np.stack([xx, yy], axis=-1)

    outline = 0.025
    ink = (40, 30, 40)
    white = (255, 255, 255)
    red = (225, 25, 60)

    # Background: pink, lighter towards the top.
    top, bottom = np.array([255, 228, 236.0]), np.array([250, 170, 195.0])
    canvas = top + (bottom - top) * yy[..., None]

    def paint(distance, colour, stroke=0.0):
        """Fills where `distance` < 0, or with stroke > 0 a line of that width along it."""
        inside = np.abs(distance) < stroke / 2 if stroke else distance < 0
        canvas[inside] = colour

    def filled(distance, colour):
        paint(distance - outline, ink)  # outline: the shape grown by `outline`
        paint(distance, colour)

    for ear in (
        ((0.15, 0.44), (0.21, 0.08), (0.45, 0.32)),
        ((0.85, 0.44), (0.79, 0.08), (0.55, 0.32)),
    ):
        filled(_triangle_sd(p, *ear), white)
    filled(_ellipse_sd(p, (0.5, 0.6), (0.40, 0.30)), white)
    for eye_x in (0.35, 0.65):
        paint(_ellipse_sd(p, (eye_x, 0.6), (0.035, 0.055)), (20, 20, 20))
    filled(_ellipse_sd(p, (0.5, 0.7), (0.045, 0.032)), (255, 200, 20))
    for sign in (-1.0, 1.0):
        for start_y, end_y in ((0.64, 0.58), (0.69, 0.70), (0.74, 0.82)):
            start = (0.5 + sign * 0.2, start_y)
            end = (0.5 + sign * 0.44, end_y)
            paint(_segment_sd(p, start, end), ink, stroke=0.02)
    for loop_x in (0.66, 0.86):
        filled(_ellipse_sd(p, (loop_x, 0.2), (0.09, 0.07)), red)
    filled(_ellipse_sd(p, (0.76, 0.2), (0.04, 0.045)), (190, 10, 45))

    # Average each ss×ss block of samples: the anti-aliased pixel value.
    canvas = canvas.reshape(height, ss, width, ss, 3).mean(axis=(1, 3))
    return canvas.astype(np.float32)


def _ellipse_sd(p, center, radii) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (exact for circles)."""
    q = (p - np.asarray(center)) / np.asarray(radii)
    return (np.linalg.norm(q, axis=-1) - 1.0) * min(radii)


def _segment_sd(p, a, b) -> np.ndarray:
    """Distance to the segment from `a` to `b` (a line of zero width)."""
    a, b = np.asarray(a), np.asarray(b)
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


def _triangle_sd(p, a, b, c) -> np.ndarray:
    """Signed distance to a triangle: distance to its nearest edge, negative inside."""
    edges = ((a, b), (b, c), (c, a))
    distance = np.min([_segment_sd(p, u, v) for u, v in edges], axis=0)
    # Inside iff p is on the same side of all three edges (either orientation).
    sides = [_cross(np.asarray(v) - np.asarray(u), p - np.asarray(u)) for u, v in edges]
    inside = np.all([s >= 0 for s in sides], axis=0) | np.all([s <= 0 for s in sides], axis=0)
    return np.where(inside, -distance, distance)


def _cross(u, v) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def check_pattern(attack: str, pattern) -> str:
    """Validates a pattern name (one of `PATTERNS`)."""
    if pattern not in PATTERNS:
        raise ValueError(
            f"{attack}: unknown pattern {pattern!r}; valid options are {list(PATTERNS)}"
        )
    return pattern
