"""On-device augmentation: NumPy references for crop, flip and normalize; jit and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.data import augment

B, H, W, C = 16, 8, 6, 3


def _images(batch=B, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, H, W, C), dtype=np.uint8)


def _numpy_crop(images, offsets, padding):
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    return np.stack([p[r : r + H, c : c + W] for p, (r, c) in zip(padded, offsets, strict=True)])


@pytest.mark.parametrize("padding", [1, 2, 4])
def test_crop_at_matches_numpy_reference(padding):
    images = _images()
    rng = np.random.default_rng(padding)
    offsets = rng.integers(0, 2 * padding + 1, (B, 2))
    # The extremes: no shift, and the largest shift in each direction.
    offsets[:3] = [[padding, padding], [0, 0], [2 * padding, 2 * padding]]
    got = augment.crop_at(jnp.asarray(images), jnp.asarray(offsets), padding)
    assert got.dtype == jnp.uint8 and got.shape == images.shape
    np.testing.assert_array_equal(got, _numpy_crop(images, offsets, padding))
    np.testing.assert_array_equal(got[0], images[0])  # centre offset = identity


def test_random_crop_uses_per_example_offsets():
    images, padding = _images(64), 4
    key = jax.random.key(0)
    got = augment.random_crop(key, images, padding=padding)
    offsets = np.asarray(augment.crop_offsets(jax.random.split(key, 64), padding))
    assert offsets.min() >= 0 and offsets.max() <= 2 * padding
    assert len({tuple(o) for o in offsets}) > 10  # not one crop for the whole batch
    np.testing.assert_array_equal(got, _numpy_crop(images, offsets, padding))


def test_crop_offsets_cover_the_whole_range():
    offsets = np.asarray(augment.crop_offsets(jax.random.split(jax.random.key(1), 2000), 2))
    assert set(np.unique(offsets)) == {0, 1, 2, 3, 4}


def test_random_crop_without_padding_is_identity():
    images = _images()
    np.testing.assert_array_equal(augment.random_crop(jax.random.key(0), images, 0), images)


def test_random_crop_accepts_one_key_per_example():
    images = _images()
    keys = jax.random.split(jax.random.key(3), B)
    np.testing.assert_array_equal(
        augment.random_crop(keys, images), augment.random_crop(jax.random.key(3), images)
    )
    with pytest.raises(ValueError, match="keys of shape"):
        augment.random_crop(keys[:3], images)


def test_random_flip_mirrors_exactly_the_masked_examples():
    images = _images(64)
    key = jax.random.key(2)
    got = np.asarray(augment.random_flip(key, images))
    mask = np.asarray(augment.flip_mask(jax.random.split(key, 64)))
    assert 0 < mask.sum() < 64  # both outcomes occur
    np.testing.assert_array_equal(got[mask], images[mask][:, :, ::-1])
    np.testing.assert_array_equal(got[~mask], images[~mask])


def test_augment_is_crop_then_flip_with_per_example_keys():
    images = _images()
    key = jax.random.key(4)
    got = np.asarray(augment.augment(key, images, crop_padding=2))
    crop_keys, flip_keys = jnp.moveaxis(jax.vmap(jax.random.split)(jax.random.split(key, B)), 1, 0)
    offsets = np.asarray(augment.crop_offsets(crop_keys, 2))
    mask = np.asarray(augment.flip_mask(flip_keys))
    want = _numpy_crop(images, offsets, 2)
    want[mask] = want[mask][:, :, ::-1]
    np.testing.assert_array_equal(got, want)


def test_augment_dtype_shape_determinism_and_options():
    images = _images()
    key = jax.random.key(5)
    a = augment.augment(key, images)
    assert a.dtype == jnp.uint8 and a.shape == images.shape
    np.testing.assert_array_equal(a, augment.augment(key, images))
    assert not np.array_equal(a, augment.augment(jax.random.key(6), images))
    np.testing.assert_array_equal(augment.augment(key, images, crop_padding=0, flip=False), images)
    flipped_only = np.asarray(augment.augment(key, images, crop_padding=0))
    for got, image in zip(flipped_only, images, strict=True):
        assert np.array_equal(got, image) or np.array_equal(got, image[:, ::-1])


def test_augment_of_an_example_does_not_depend_on_the_rest_of_the_batch():
    images = _images()
    other = images.copy()
    other[1:] = 255 - other[1:]
    key = jax.random.key(7)
    np.testing.assert_array_equal(augment.augment(key, images)[0], augment.augment(key, other)[0])


def test_augment_under_jit_and_vmap():
    images = _images()
    key = jax.random.key(8)
    jitted = jax.jit(augment.augment, static_argnames=("crop_padding", "flip"))
    np.testing.assert_array_equal(jitted(key, images), augment.augment(key, images))
    keys = jax.random.split(key, 3)
    stacked = np.stack([images, images[::-1], 255 - images])
    batched = jax.jit(jax.vmap(augment.augment))(keys, stacked)
    for k, x, got in zip(keys, stacked, batched, strict=True):
        np.testing.assert_array_equal(got, augment.augment(k, x))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_normalize_matches_numpy(dtype):
    images = _images()
    mean, std = augment.CIFAR10_MEAN, augment.CIFAR10_STD
    got = jax.jit(augment.normalize, static_argnames="dtype")(images, mean, std, dtype=dtype)
    assert got.dtype == dtype and got.shape == images.shape
    want = (images.astype(np.float64) / 255 - np.array(mean)) / np.array(std)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


def test_legacy_raw_keys_are_accepted_and_equal_typed_keys():
    # One key convention everywhere: the attacks take raw jax.random.PRNGKey arrays too.
    images = _images()
    typed, raw = jax.random.key(3), jax.random.PRNGKey(3)
    expected = augment.augment(typed, images)
    np.testing.assert_array_equal(augment.augment(raw, images), expected)
    np.testing.assert_array_equal(jax.jit(augment.augment)(raw, images), expected)
    np.testing.assert_array_equal(
        augment.random_crop(raw, images), augment.random_crop(typed, images)
    )
    np.testing.assert_array_equal(
        augment.random_flip(raw, images), augment.random_flip(typed, images)
    )
    per_example = jax.random.split(raw, B)  # raw uint32[B, 2]
    np.testing.assert_array_equal(
        augment.random_flip(per_example, images),
        augment.random_flip(jax.random.wrap_key_data(per_example), images),
    )
    from jaxbd.data import augment_batch

    np.testing.assert_array_equal(augment_batch(raw, images), expected)


def test_a_non_key_is_a_clear_error():
    with pytest.raises(ValueError, match="expected a PRNG key"):
        augment.augment(np.zeros(2, np.float32), _images())
    with pytest.raises(ValueError, match="expected a PRNG key"):
        augment.random_flip(0, _images())


def test_the_class_stratified_subset_helper_is_public():
    # Lives beside augmentation in jaxbd.data; importing it must not need JAX either.
    import jaxbd.data
    from jaxbd.data import stratify

    assert jaxbd.data.stratified_prefix is stratify.stratified_prefix
    labels = np.repeat(np.arange(3), [6, 3, 3])  # stored class by class
    picked = jaxbd.data.stratified_prefix(labels, 6)
    np.testing.assert_array_equal(np.bincount(labels[picked], minlength=3), [3, 2, 1])
    assert np.all(np.diff(picked) > 0)
