"""Low-frequency trigger: a fixed additive pattern that lives in a low band of the 2-D DCT.

FTrojan (Wang et al. 2022, ECCV) hides its trigger in mid- and high-frequency DCT
coefficients, which frequency-based detectors look for; this variant moves the trigger into
the low frequencies, where natural images have their energy: a smooth, blotchy colour shift.

The band `(lo, hi)` is every coefficient (u, v) of the orthonormal 2-D DCT-II with
lo ≤ u + v ≤ hi, where u and v count half-periods down and across the image (so a band gives
the same picture at every resolution; lo ≥ 1 leaves out the mean). From `seed`, each
in-band coefficient of each RGB channel gets a random sign; the inverse DCT, scaled to a peak
of `magnitude` grey levels, is the pattern P, and x' = clip(round(x + P), 0, 255).

The band and the construction in detail, and the differences from FTrojan: docs/attacks.md,
"Low-frequency trigger".
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jaxbd.attacks.base import Attack
from jaxbd.attacks.pixels import add_pattern
from jaxbd.attacks.validation import check_inputs, check_seed, check_target, is_int, is_real


def low_frequency(
    *,
    target: int = 0,
    band: Sequence[int] = (2, 8),
    magnitude: float = 24.0,
    seed: int = 0,
) -> Attack:
    """Builds the low-frequency DCT trigger attack.

    Args:
        target: class every triggered image is relabelled to (a non-negative int; the range
            [0, C) is checked where C is known, in `poison_dataset`).
        band: `(lo, hi)`, ints with 0 ≤ lo ≤ hi: the coefficients (u, v) with
            lo ≤ u + v ≤ hi (see the module docstring). At least one must exist in the
            image (lo ≤ H + W − 2), checked at trace time; those beyond the image's H×W
            coefficients are left out.
        magnitude: the pattern's peak absolute value in grey levels, in (0, 255].
        seed: seed of the coefficient signs.

    Returns:
        An `Attack` whose `train_fn` and `test_fn` are the same deterministic transform (the
        key is ignored): images `uint8[..., H, W, 3]` of any leading batch shape and size get
        the pattern built for that H×W at trace time, labels become `target`.

    Raises:
        ValueError: for a bad target, band, magnitude or seed.
    """
    name = "low_frequency"
    target = check_target(name, target)
    pair = tuple(band) if isinstance(band, Sequence | np.ndarray) else ()
    if len(pair) != 2 or not all(is_int(b) and b >= 0 for b in pair) or pair[0] > pair[1]:
        raise ValueError(
            f"{name}: band must be (lo, hi), non-negative ints with lo <= hi (coefficients "
            f"(u, v) with lo <= u + v <= hi), got {band!r}"
        )
    band = (int(pair[0]), int(pair[1]))
    if not is_real(magnitude) or not 0 < magnitude <= 255:
        raise ValueError(f"{name}: magnitude must be a number in (0, 255], got {magnitude!r}")
    magnitude = float(magnitude)
    seed = check_seed(name, seed)

    def transform(key, images, labels):
        del key  # deterministic
        images, labels = check_inputs(name, images, labels)
        height, width = images.shape[-3:-1]
        pattern = low_frequency_pattern(height, width, band=band, magnitude=magnitude, seed=seed)
        return add_pattern(images, pattern), jnp.full_like(labels, target)

    return Attack(
        name=name,
        target=target,
        train_fn=transform,
        test_fn=transform,
        params=(("band", band), ("magnitude", magnitude), ("seed", seed)),
    )


def dct_matrix(n: int) -> np.ndarray:
    """float64[n, n]: the orthonormal DCT-II, D[k, i] = c_k·cos(π(2i + 1)k / 2n).

    c_0 = √(1/n) and c_k = √(2/n) otherwise, so D is orthogonal: the DCT of a signal x is
    D @ x and its inverse is D.T @ c (scipy's `dct(x, norm="ortho")`).
    """
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    basis = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis


def low_frequency_pattern(
    height: int,
    width: int,
    *,
    band: tuple[int, int] = (2, 8),
    magnitude: float = 24.0,
    seed: int = 0,
) -> np.ndarray:
    """The additive trigger P for H×W images (see the module docstring).

    Built with NumPy at trace time from static shapes (a constant under `jax.jit`) and
    cached.

    Args:
        height: H.
        width: W.
        band: `(lo, hi)`, coefficients (u, v) with lo ≤ u + v ≤ hi.
        magnitude: peak absolute value of P.
        seed: seed of the coefficient signs.

    Returns:
        float32[H, W, 3], read-only, with max |P| = magnitude; its 2-D DCT (per channel) is
        zero outside the band.

    Raises:
        ValueError: when no coefficient of an H×W image is in the band.
    """
    lo, hi = band
    if lo > height + width - 2:
        raise ValueError(
            f"low_frequency: band {tuple(band)} has no DCT coefficient in {height}×{width} "
            f"images (u + v is at most {height + width - 2})"
        )
    return _cached_pattern(int(height), int(width), int(lo), int(hi), float(magnitude), int(seed))


@functools.lru_cache(maxsize=64)
def _cached_pattern(height, width, lo, hi, magnitude, seed):
    rng = np.random.default_rng(seed)
    # Signs for a fixed (hi+1)×(hi+1) block, drawn before looking at H and W, so a
    # coefficient gets the same sign at every image size.
    signs = rng.integers(0, 2, size=(hi + 1, hi + 1, 3)) * 2.0 - 1.0
    rows, cols = min(hi + 1, height), min(width, hi + 1)
    u = np.arange(rows)[:, None]
    v = np.arange(cols)[None, :]
    in_band = (u + v >= lo) & (u + v <= hi)
    coefficients = signs[:rows, :cols] * in_band[..., None]
    # Inverse 2-D DCT per channel: P_c = D_H[:rows].T @ C_c @ D_W[:cols].
    pattern = np.einsum(
        "ui,uvc,vj->ijc", dct_matrix(height)[:rows], coefficients, dct_matrix(width)[:cols]
    )
    pattern *= magnitude / np.abs(pattern).max()
    pattern = pattern.astype(np.float32)
    pattern.setflags(write=False)
    return pattern
