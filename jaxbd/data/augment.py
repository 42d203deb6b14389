"""On-device data augmentation: random crop with zero padding, horizontal flip, normalization.

Every function is pure and jittable and works on a whole batch `uint8[B, H, W, C]` at once,
with one PRNG key per example, so the training step augments inside `jit` with no host work.
Images stay uint8 through crop and flip (a quarter of the memory traffic of float32) and are
converted to floating point only by `normalize`.

Per-example keys make an example's augmentation independent of which other examples share
its batch and of the batch size: `augment` splits its key into `B` keys with
`jax.random.split(key, B)`, and each example then splits its own key into a crop key and a
flip key.

Keys follow the convention of the attacks: a typed key (`jax.random.key(0)`) or a legacy raw
key (`jax.random.PRNGKey(0)`, uint32[2]; per-example: uint32[B, 2]) is accepted wherever a
key is, and both give the same augmentation for the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

# Re-exported: the normalization constants most callers pass to `normalize`.
from jaxbd.data.cifar10.formats import CIFAR10_MEAN as CIFAR10_MEAN
from jaxbd.data.cifar10.formats import CIFAR10_STD as CIFAR10_STD


def as_typed_key(key: ArrayLike) -> jax.Array:
    """A typed PRNG key array: `key` itself if typed, else a legacy raw key wrapped.

    Args:
        key: typed `key[...]` or raw uint32 `[..., 2]` (`jax.random.PRNGKey`), the
            default implementation's key data.

    Returns:
        typed `key[...]`: `jax.random.wrap_key_data` of a raw key, so `PRNGKey(s)` and
        `key(s)` draw the same numbers.

    Raises:
        ValueError: for an array that is neither (e.g. an int seed or float data).
    """
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    raw = jnp.asarray(key)
    if raw.dtype != jnp.uint32 or raw.ndim == 0:
        raise ValueError(
            "expected a PRNG key (jax.random.key(seed), or a raw jax.random.PRNGKey(seed)), "
            f"got an array of dtype {raw.dtype} and shape {raw.shape}"
        )
    return jax.random.wrap_key_data(raw)


def _per_example_keys(key: jax.Array, batch: int) -> jax.Array:
    """`key[B]`: `key` itself when it already holds one key per example, else `split(key, B)`."""
    key = as_typed_key(key)
    if key.ndim == 0:
        return jax.random.split(key, batch)
    if key.shape != (batch,):
        raise ValueError(f"expected one key or {batch} keys, got keys of shape {key.shape}")
    return key


def crop_offsets(keys: jax.Array, padding: int) -> jax.Array:
    """Samples crop offsets for `random_crop`, one (row, column) pair per key.

    Args:
        keys: key[B] (or raw uint32[B, 2]), one PRNG key per example.
        padding: the zero padding on each side.

    Returns:
        int32[B, 2], each offset uniform in [0, 2 * padding] (inclusive), i.e. a shift of the
        image by -padding..+padding pixels.
    """
    keys = as_typed_key(keys)
    return jax.vmap(lambda k: jax.random.randint(k, (2,), 0, 2 * padding + 1))(keys)


def crop_at(images: jax.Array, offsets: jax.Array, padding: int) -> jax.Array:
    """Crops each zero-padded image at the given offsets.

    Args:
        images: uint8[B, H, W, C].
        offsets: int[B, 2], (row, column) of each crop's top-left corner in the padded image,
            in [0, 2 * padding].
        padding: the zero padding on each side.

    Returns:
        uint8[B, H, W, C]: `pad(images)[b, r:r + H, c:c + W]` with `(r, c) = offsets[b]`.
    """
    _, H, W, C = images.shape
    # Pad once for the whole batch; the per-example slice then lowers to one gather.
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def crop_one(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (H, W, C))

    return jax.vmap(crop_one)(padded, offsets)


def random_crop(key: jax.Array, images: ArrayLike, padding: int = 4) -> jax.Array:
    """Pads each image with `padding` zeros on every side and crops it back at a random offset.

    Args:
        key: one PRNG key (split into one per example) or key[B], one per example; typed
            or raw.
        images: uint8[B, H, W, C].
        padding: zero padding per side; the crop shifts the image by up to this many pixels
            in each direction. 0 returns the images unchanged.

    Returns:
        uint8[B, H, W, C].
    """
    images = jnp.asarray(images)
    if padding == 0:
        return images
    keys = _per_example_keys(key, images.shape[0])
    return crop_at(images, crop_offsets(keys, padding), padding)


def flip_mask(keys: jax.Array) -> jax.Array:
    """bool[B]: which examples `random_flip` mirrors (each with probability 1/2), for
    typed `key[B]` or raw uint32[B, 2] keys."""
    return jax.vmap(jax.random.bernoulli)(as_typed_key(keys))


def random_flip(key: jax.Array, images: ArrayLike) -> jax.Array:
    """Mirrors each image left-right with probability 1/2, independently per example.

    Args:
        key: one PRNG key (split into one per example) or key[B], one per example; typed
            or raw.
        images: uint8[B, H, W, C].

    Returns:
        uint8[B, H, W, C].
    """
    images = jnp.asarray(images)
    keys = _per_example_keys(key, images.shape[0])
    flip = flip_mask(keys)
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def augment(
    key: jax.Array, images: ArrayLike, *, crop_padding: int = 4, flip: bool = True
) -> jax.Array:
    """The standard CIFAR training augmentation: random crop, then random horizontal flip.

    Args:
        key: one PRNG key, typed or raw (see the module docstring); split into one key per
            example, and each of those into a crop key and a flip key.
        images: uint8[B, H, W, C].
        crop_padding: zero padding of the random crop (0: no crop).
        flip: whether to apply random horizontal flips.

    Returns:
        uint8[B, H, W, C].
    """
    images = jnp.asarray(images)
    keys = jax.random.split(as_typed_key(key), images.shape[0])
    crop_keys, flip_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    images = random_crop(crop_keys, images, padding=crop_padding)
    if flip:
        images = random_flip(flip_keys, images)
    return images


def normalize(
    images: ArrayLike,
    mean: Sequence[float] | ArrayLike,
    std: Sequence[float] | ArrayLike,
    dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """Maps uint8 pixels to `(x / 255 - mean) / std`.

    Args:
        images: uint8[B, H, W, C].
        mean: float[C], per-channel mean in [0, 1] pixel units.
        std: float[C], per-channel standard deviation in [0, 1] pixel units.
        dtype: output dtype (e.g. bfloat16 for mixed precision).

    Returns:
        dtype[B, H, W, C].
    """
    # Compute in float32 and cast once at the end, so bfloat16 output has one rounding.
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return ((x - mean) / std).astype(dtype)
