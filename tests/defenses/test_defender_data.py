"""The defender's data: clean images only, stratified, a held-out part, its own stream."""

import jax
import numpy as np
import pytest

from jaxbd.data import make_synthetic
from jaxbd.defenses import DefenderDataSettings, defender_data
from jaxbd.settings import InvalidSettingError

TRAIN = make_synthetic(num_train=400, num_test=8, image_size=8, seed=0).train


def test_draws_only_clean_images_stratified_with_a_held_out_part():
    is_poison = np.zeros(len(TRAIN), bool)
    is_poison[::7] = True
    data = defender_data(jax.random.key(0), TRAIN, is_poison, DefenderDataSettings(fraction=0.1))
    assert len(data) == 40
    both = np.concatenate([data.tune_indices, data.val_indices])
    assert len(set(both.tolist())) == 40 and not is_poison[both].any()
    np.testing.assert_array_equal(data.tune.labels, TRAIN.labels[data.tune_indices])
    np.testing.assert_array_equal(data.val.images, TRAIN.images[data.val_indices])
    assert np.all(np.bincount(data.val.labels, minlength=10) >= 1)
    counts = np.bincount(np.concatenate([data.tune.labels, data.val.labels]), minlength=10)
    clean_counts = np.bincount(TRAIN.labels[~is_poison], minlength=10)
    # Proportional to the clean class sizes (largest remainder), at least 2 per class.
    assert counts.min() >= 2 and np.all(np.abs(counts - 40 * clean_counts / clean_counts.sum()) < 1)


def test_per_class_overrides_the_fraction_and_the_draw_is_a_function_of_the_key():
    no_poison = np.zeros(len(TRAIN), bool)
    settings = DefenderDataSettings(per_class=10, val_fraction=0.2)
    a = defender_data(jax.random.key(1), TRAIN, no_poison, settings)
    b = defender_data(jax.random.key(1), TRAIN, no_poison, settings)
    c = defender_data(jax.random.key(2), TRAIN, no_poison, settings)
    assert np.all(np.bincount(a.val.labels, minlength=10) == 2)
    assert np.all(np.bincount(a.tune.labels, minlength=10) == 8)
    np.testing.assert_array_equal(a.tune_indices, b.tune_indices)
    assert not np.array_equal(a.tune_indices, c.tune_indices)


def test_errors():
    no_poison = np.zeros(len(TRAIN), bool)
    with pytest.raises(ValueError, match="needs 100 clean images of class"):
        defender_data(jax.random.key(0), TRAIN, no_poison, DefenderDataSettings(per_class=100))
    with pytest.raises(InvalidSettingError, match="fraction"):
        DefenderDataSettings(fraction=-0.1)
    with pytest.raises(InvalidSettingError, match="per_class"):
        DefenderDataSettings(per_class=1)
