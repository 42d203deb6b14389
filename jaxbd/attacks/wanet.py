"""WaNet (Nguyen & Tran 2021, "WaNet — imperceptible warping-based backdoor attack", ICLR): a
small, smooth geometric warp of the whole image as the trigger.

The warping field is fixed by the seed: a k×k grid of random 2-D control displacements,
uniform in [−1, 1] and normalized to mean absolute value 1, upsampled bicubically to the image
and scaled by the strength s. Triggered images are resampled bilinearly at the displaced
coordinates, clamped to the image border:

    x'[i, j] = x(i + s·ρ_H·F_row[i, j], j + s·ρ_W·F_col[i, j]),   ρ_N = (N − 1) / (2N)

Noise mode: a fraction `noise_fraction` of the poisoned examples (2/3, the paper's
cross_ratio = 2) get the warp plus a random per-pixel perturbation of the field and keep
their true label, so that the network learns the exact warp rather than "any warp".

How ρ_N and the field match the reference implementation, and how the paper's per-batch
poisoning maps to jaxbd's static poisoning: docs/attacks.md, "WaNet".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.attacks.base import Attack
from jaxbd.attacks.pixels import to_uint8
from jaxbd.attacks.sampling import uniform
from jaxbd.attacks.validation import (
    check_inputs,
    check_probability,
    check_seed,
    check_target,
    is_int,
    is_real,
)


def wanet(
    *,
    target: int = 0,
    grid_size: int = 4,
    strength: float = 0.5,
    noise_fraction: float = 2 / 3,
    seed: int = 0,
) -> Attack:
    """Builds the WaNet attack.

    Args:
        target: class the backdoor maps warped inputs to (a non-negative int; the range
            [0, C) is checked where C is known, in `poison_dataset`).
        grid_size: k, the side of the control grid (an int ≥ 2; larger k, less smooth warps).
        strength: s > 0, the warping strength (the paper uses 0.5; it calls the warp
            imperceptible up to about 1).
        noise_fraction: probability in [0, 1) that a poisoned training example is a noise
            sample (warp plus random field perturbation, true label kept) rather than a
            backdoor sample (warp, label `target`).
        seed: seed of the control grid.

    Returns:
        An `Attack`. `train_fn` warps each image and makes it a noise sample with probability
        `noise_fraction` (per-image randomness from the key; works batched and under `vmap`
        over per-example keys). `test_fn` is deterministic: the warp, labels `target`.
        Images are `uint8[..., H, W, 3]` of any leading batch shape and any H, W ≥ 2.

    Raises:
        ValueError: for a hyper-parameter outside the ranges above.
    """
    name = "wanet"
    target = check_target(name, target)
    if not is_int(grid_size) or grid_size < 2:
        raise ValueError(f"{name}: grid_size (k) must be an int >= 2, got {grid_size!r}")
    grid_size = int(grid_size)
    if not is_real(strength) or strength <= 0:
        raise ValueError(f"{name}: strength (s) must be a positive number, got {strength!r}")
    strength = float(strength)
    # 1 is excluded: with only noise samples, nothing maps the warp to the target.
    noise_fraction = check_probability(name, "noise_fraction", noise_fraction)
    seed = check_seed(name, seed)

    def train_fn(key, images, labels):
        images, labels = check_inputs(name, images, labels)
        height, width = images.shape[-3:-1]
        field = warp_field(height, width, grid_size=grid_size, strength=strength, seed=seed)
        batch_shape = images.shape[:-3]
        mode_key, perturb_key = jax.random.split(key)
        is_noise = uniform(mode_key, batch_shape) < noise_fraction
        scale = np.array([_pixels_per_unit(height), _pixels_per_unit(width)], np.float32)
        perturbation = scale * (2.0 * uniform(perturb_key, (*batch_shape, height, width, 2)) - 1.0)
        field = field + jnp.where(is_noise[..., None, None, None], perturbation, 0.0)
        warped = grid_sample(images, field)
        return warped, jnp.where(is_noise, labels, jnp.asarray(target, labels.dtype))

    def test_fn(key, images, labels):
        del key  # deterministic
        images, labels = check_inputs(name, images, labels)
        height, width = images.shape[-3:-1]
        field = warp_field(height, width, grid_size=grid_size, strength=strength, seed=seed)
        return grid_sample(images, field), jnp.full_like(labels, target)

    return Attack(
        name=name,
        target=target,
        train_fn=train_fn,
        test_fn=test_fn,
        params=(
            ("grid_size", grid_size),
            ("strength", strength),
            ("noise_fraction", noise_fraction),
            ("seed", seed),
        ),
    )


def warp_field(
    height: int, width: int, *, grid_size: int = 4, strength: float = 0.5, seed: int = 0
) -> np.ndarray:
    """The WaNet displacement field for H×W images, in pixels (see the module docstring).

    Built at trace time from static shapes (so a constant under `jax.jit`) and cached.

    Args:
        height: H ≥ 2.
        width: W ≥ 2.
        grid_size: k ≥ 2.
        strength: s.
        seed: seed of the control grid.

    Returns:
        float32[H, W, 2], read-only: (row, column) displacement of each output pixel's
        sampling point.

    Raises:
        ValueError: for images smaller than 2×2.
    """
    if height < 2 or width < 2:
        raise ValueError(f"wanet: images must be at least 2×2 to warp, got {height}×{width}")
    return _cached_field(int(height), int(width), int(grid_size), float(strength), int(seed))


@functools.lru_cache(maxsize=64)
def _cached_field(height, width, grid_size, strength, seed):
    rng = np.random.default_rng(seed)
    control = rng.uniform(-1.0, 1.0, size=(grid_size, grid_size, 2))
    control /= np.mean(np.abs(control))
    # Bicubic upsampling is separable: one interpolation matrix per axis.
    upsampled = np.einsum(
        "ik,klc,jl->ijc",
        _bicubic_matrix(height, grid_size),
        control,
        _bicubic_matrix(width, grid_size),
    )
    field = upsampled * strength * np.array([_pixels_per_unit(height), _pixels_per_unit(width)])
    field = field.astype(np.float32)
    field.setflags(write=False)
    return field


def _bicubic_matrix(size: int, grid_size: int, a: float = -0.75) -> np.ndarray:
    """float64[size, k]: PyTorch's bicubic interpolation (align_corners=True) as a matrix.

    Output sample i sits at t = i·(k − 1)/(size − 1) in control-point units, so the first and
    last control points land on the first and last pixels; it mixes the four control points
    ⌊t⌋ − 1 … ⌊t⌋ + 2 (indices clamped to the grid, replicating its border) with the Keys
    cubic-convolution kernel, a = −0.75 as in `torch.nn.functional.interpolate`. NumPy
    rather than `jax.image` because this runs once per image size at trace time, where
    eager JAX would compile every op.
    """
    t = np.arange(size) * (grid_size - 1) / (size - 1)
    base = np.floor(t).astype(int)
    frac = t - base
    matrix = np.zeros((size, grid_size))
    for offset in range(-1, 3):
        distance = np.abs(frac - offset)
        near = ((a + 2) * distance - (a + 3)) * distance**2 + 1  # |d| <= 1
        far = ((a * distance - 5 * a) * distance + 8 * a) * distance - 4 * a  # 1 < |d| < 2
        weight = np.where(distance <= 1, near, np.where(distance < 2, far, 0.0))
        np.add.at(matrix, (np.arange(size), np.clip(base + offset, 0, grid_size - 1)), weight)
    return matrix


def _pixels_per_unit(size: int) -> float:
    """ρ_N: pixels per unit of the reference's `displacement / N` in normalized coordinates."""
    return (size - 1) / (2 * size)


def grid_sample(images: jax.Array, field: jax.Array) -> jax.Array:
    """Bilinear resampling at displaced pixel coordinates, clamped to the border.

    Output pixel (i, j) is the bilinear interpolation of the image at
    (i + field[..., i, j, 0], j + field[..., i, j, 1]), with both coordinates clamped to the
    image (`grid_sample(..., align_corners=True)` on a grid clamped to [−1, 1]).

    Args:
        images: uint8[..., H, W, 3].
        field: float32[H, W, 2] shared by all images, or [..., H, W, 2] per image.

    Returns:
        uint8[..., H, W, 3], rounded to the nearest integer.
    """
    height, width = images.shape[-3:-1]
    batch_shape = jnp.broadcast_shapes(images.shape[:-3], field.shape[:-3])
    rows = jnp.clip(np.arange(height, dtype=np.float32)[:, None] + field[..., 0], 0, height - 1)
    cols = jnp.clip(np.arange(width, dtype=np.float32)[None, :] + field[..., 1], 0, width - 1)
    row0, col0 = jnp.floor(rows), jnp.floor(cols)
    row_weight, col_weight = (rows - row0)[..., None], (cols - col0)[..., None]
    row0, col0 = row0.astype(jnp.int32), col0.astype(jnp.int32)
    row1, col1 = jnp.minimum(row0 + 1, height - 1), jnp.minimum(col0 + 1, width - 1)
    flat = jnp.broadcast_to(images, (*batch_shape, height, width, 3))
    flat = flat.reshape(*batch_shape, height * width, 3).astype(jnp.float32)

    def gather(row, col):
        # One flat gather per corner; the index broadcasts over the batch when shared.
        index = jnp.broadcast_to(row * width + col, (*batch_shape, height, width))
        index = index.reshape(*batch_shape, height * width, 1)
        return jnp.take_along_axis(flat, index, axis=-2).reshape(*batch_shape, height, width, 3)

    top = (1 - col_weight) * gather(row0, col0) + col_weight * gather(row0, col1)
    bottom = (1 - col_weight) * gather(row1, col0) + col_weight * gather(row1, col1)
    warped = (1 - row_weight) * top + row_weight * bottom
    return to_uint8(warped)
