"""SIG: the sinusoid, clean-label training vs relabelled test, jit/vmap, poisoning, errors."""

import jax
import numpy as np
import pytest

from jaxbd.attacks import poison_dataset
from jaxbd.attacks.sig import sig, sig_signal
from jaxbd.data.dataset import Dataset

KEY = jax.random.key(0)
TARGET = 2
ATTACK = sig(target=TARGET)
TRAIN = jax.jit(ATTACK.train_fn)
TEST = jax.jit(ATTACK.test_fn)


def _images(shape, seed=0, low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, size=shape, dtype=np.uint8)


def _exact(images, amplitude=20.0, frequency=6.0):
    """x + Δ·sin(2π·j·f/W) in float64, clipped (before rounding)."""
    width = images.shape[-2]
    signal = amplitude * np.sin(2 * np.pi * np.arange(width) * frequency / width)
    return np.clip(images + signal[:, None], 0, 255)


def _assert_rounds(out, exact):
    np.testing.assert_array_less(np.abs(np.asarray(out, np.float64) - exact), 0.5 + 1e-3)


def test_signal():
    signal = sig_signal(32, 20.0, 6.0)
    assert signal.shape == (32, 1) and signal.dtype == np.float32
    assert signal[0, 0] == 0 and np.abs(signal).max() <= 20
    # Six periods across the row: the DFT peaks at frequency index 6.
    assert np.argmax(np.abs(np.fft.rfft(signal[:, 0]))) == 6


def test_train_adds_the_signal_to_target_images_and_keeps_labels_test_relabels():
    images, labels = _images((8, 16, 32, 3)), np.full(8, TARGET, np.int32)
    out, out_labels = TRAIN(KEY, images, labels)
    assert out.dtype == np.uint8 and out.shape == images.shape and out_labels.dtype == np.int32
    np.testing.assert_array_equal(out_labels, labels)
    _assert_rounds(out, _exact(images))
    test, test_labels = TEST(KEY, images, np.arange(8, dtype=np.int32) % 4)
    np.testing.assert_array_equal(test, out)  # test_fn: every image, whatever its label
    np.testing.assert_array_equal(test_labels, np.full(8, TARGET))
    assert ATTACK.clean_label is True
    # Deterministic: the key is ignored.
    np.testing.assert_array_equal(TRAIN(jax.random.key(4), images, labels)[0], out)


def test_train_leaves_non_target_images_unchanged_like_every_clean_label_attack():
    # One rule for all clean-label attacks: the training transform changes only target-class
    # images, so a mixed batch never gets a dirty-label poison (as cl_badnets does).
    from jaxbd.attacks import cl_badnets

    images, labels = _images((8, 16, 32, 3)), np.arange(8, dtype=np.int32) % 4
    is_target = labels == TARGET
    out, out_labels = TRAIN(KEY, images, labels)
    np.testing.assert_array_equal(out_labels, labels)
    np.testing.assert_array_equal(np.asarray(out)[~is_target], images[~is_target])
    _assert_rounds(np.asarray(out)[is_target], _exact(images[is_target]))
    patched, _ = jax.jit(cl_badnets(target=TARGET, size=3).train_fn)(KEY, images, labels)
    np.testing.assert_array_equal(np.asarray(patched)[~is_target], images[~is_target])
    assert np.all(np.any(np.asarray(patched)[is_target] != images[is_target], axis=(1, 2, 3)))


def test_same_shift_for_every_row_and_channel_away_from_clipping():
    images = _images((4, 16, 32, 3), low=30, high=226)  # Δ = 20 never clips
    out, _ = TRAIN(KEY, images, np.full((4,), TARGET, np.int32))
    diff = np.asarray(out, np.int32) - images
    assert np.abs(diff).max() <= 20
    # One rounded value per column (up to a tie at .5), the sinusoid.
    signal = sig_signal(32, 20.0, 6.0)[:, 0]
    assert np.all(np.abs(diff - signal[:, None]) <= 0.5 + 1e-3)


def test_vmap_and_leading_shapes():
    images, labels = _images((8, 16, 32, 3)), np.arange(8, dtype=np.int32)
    keys = jax.random.split(KEY, 8)
    batched = TEST(KEY, images, labels)
    mapped = jax.jit(jax.vmap(ATTACK.test_fn))(keys, images, labels)
    np.testing.assert_array_equal(mapped[0], batched[0])
    np.testing.assert_array_equal(mapped[1], batched[1])
    target_labels = np.full((2, 4), TARGET, np.int32)
    out, out_labels = TRAIN(KEY, images.reshape(2, 4, 16, 32, 3), target_labels)
    assert out.shape == (2, 4, 16, 32, 3) and out_labels.shape == (2, 4)
    np.testing.assert_array_equal(np.asarray(out).reshape(images.shape), batched[0])


def test_other_image_sizes():
    images = _images((3, 24, 40, 3))
    out, _ = TRAIN(KEY, images, np.full((3,), TARGET, np.int32))
    _assert_rounds(out, _exact(images))


def test_frequency_at_or_above_nyquist_fails_at_trace_time():
    labels = jax.ShapeDtypeStruct((2,), np.int32)
    with pytest.raises(ValueError, match="Nyquist"):
        jax.eval_shape(ATTACK.train_fn, KEY, jax.ShapeDtypeStruct((2, 32, 12, 3), np.uint8), labels)
    # Just below the limit is fine.
    jax.eval_shape(ATTACK.train_fn, KEY, jax.ShapeDtypeStruct((2, 4, 13, 3), np.uint8), labels)


def test_poison_dataset_poisons_only_target_images_and_keeps_labels():
    n = 64
    labels = (np.arange(n) % 4).astype(np.int32)  # 16 images of the target class
    data = Dataset(images=_images((n, 16, 32, 3), 1), labels=labels, num_classes=4)
    p = poison_dataset(KEY, data, ATTACK, fraction=0.125)  # 8 poisons (of all 64)
    idx = p.poison_indices
    assert idx.size == round(0.125 * n)
    assert np.all(data.labels[idx] == TARGET)
    np.testing.assert_array_equal(p.dataset.labels, data.labels)
    clean = ~p.is_poison
    np.testing.assert_array_equal(p.dataset.images[clean], data.images[clean])
    _assert_rounds(p.dataset.images[idx], _exact(data.images[idx]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"amplitude": 0}, "amplitude"),
        ({"amplitude": 300}, "amplitude"),
        ({"amplitude": float("nan")}, "amplitude"),
        ({"frequency": 0}, "frequency"),
        ({"frequency": -6}, "frequency"),
        ({"frequency": "6"}, "frequency"),
        ({"target": -1}, "target"),
        ({"target": 1.0}, "target"),
    ],
)
def test_bad_hyperparameters_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=rf"sig: .*{message}"):
        sig(**kwargs)


def test_defaults_params_and_hashable():
    attack = sig()
    assert (attack.name, attack.target, attack.clean_label) == ("sig", 0, True)
    assert dict(attack.params) == {"amplitude": 20.0, "frequency": 6.0}
    hash(attack)
    assert attack.description == "sig(target=0, amplitude=20.0, frequency=6.0)"
