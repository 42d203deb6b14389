"""The config-facing dispatcher `load_dataset(settings)`, from `DataSettings` or `config.data`."""

import numpy as np
import pytest

from jaxbd import configs
from jaxbd.data import DataError, Dataset, DataSettings, load_dataset, make_synthetic
from jaxbd.data.stratify import class_budgets, stratified_prefix
from jaxbd.settings import ConfigError


def _data_config(**overrides):
    config = configs.base_config().data
    config.update(overrides)
    return config


def test_synthetic_from_the_default_config():
    config = _data_config(name="synthetic", num_train=40, num_test=20, image_size=8, seed=2)
    splits = load_dataset(config)
    want = make_synthetic(40, 20, image_size=8, seed=2)
    np.testing.assert_array_equal(splits.train.images, want.train.images)
    assert splits.source == want.source


def test_settings_and_their_config_load_the_same_data():
    settings = DataSettings(name="synthetic", num_train=40, num_test=20, image_size=8, seed=2)
    from_config = load_dataset(_data_config(name="synthetic", num_train=40, num_test=20,
                                            image_size=8, seed=2))  # fmt: skip
    from_settings = load_dataset(settings)
    np.testing.assert_array_equal(from_settings.train.images, from_config.train.images)
    np.testing.assert_array_equal(from_settings.test.labels, from_config.test.labels)


def test_a_partial_mapping_takes_the_defaults():
    splits = load_dataset({"name": "synthetic", "num_train": 12, "num_test": 10})
    assert (len(splits.train), len(splits.test)) == (12, 10)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError, match=r"config.data.name: .*cifar10.*synthetic.*'mnist'"):
        load_dataset(_data_config(name="mnist"))


def test_unknown_source_lists_the_choices():
    with pytest.raises(ConfigError, match=r"config.data.source: .*auto.*path.*download.*'web'"):
        load_dataset(_data_config(source="web"))


def test_cifar10_path_errors_surface(tmp_path):
    config = _data_config(path=str(tmp_path / "missing"), cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(config)


def test_limits_keep_a_class_stratified_prefix():
    c = configs.base_config().data
    c.name = "synthetic"
    c.num_train, c.num_test = 64, 32
    full = load_dataset(c)
    c.train_limit, c.test_limit = 32, 5
    limited = load_dataset(c)
    labels = full.train.labels
    # Half of each class (largest remainder), its first members in canonical order.
    budgets = class_budgets(labels, 32, 10)
    expected = np.sort(
        np.concatenate([np.flatnonzero(labels == k)[:b] for k, b in enumerate(budgets)])
    )
    np.testing.assert_array_equal(limited.train.images, full.train.images[expected])
    np.testing.assert_array_equal(limited.train.labels, labels[expected])
    assert len(limited.test) == 5
    assert "first 32 of 64" in limited.source
    c.train_limit = 0  # invalid in itself: refused by the settings
    with pytest.raises(ConfigError, match=r"config\.data\.train_limit"):
        load_dataset(c)
    c.train_limit = 65  # valid, but more than the data has
    with pytest.raises(DataError, match="train_limit"):
        load_dataset(c)


def test_limit_of_a_class_sorted_copy_keeps_every_class():
    # Image-folder copies are stored class by class: a plain prefix would drop classes.
    from jaxbd.data.load import _take

    sorted_set = Dataset(
        images=np.zeros((100, 4, 4, 3), np.uint8),
        labels=np.repeat(np.arange(10), 10).astype(np.int32),
        num_classes=10,
    )
    np.testing.assert_array_equal(
        np.bincount(_take(sorted_set, 20, "train_limit").labels), [2] * 10
    )


def test_stratified_prefix_takes_each_class_in_canonical_order():
    labels = np.array([2, 0, 0, 1, 0, 2, 1, 0])
    # Budgets for 4 of 8: class 0 (4 members) 2, classes 1 and 2 (2 each) 1.
    np.testing.assert_array_equal(stratified_prefix(labels, 4, 3), [0, 1, 2, 3])
    np.testing.assert_array_equal(stratified_prefix(labels, 0, 3), np.zeros(0, np.int64))
    assert stratified_prefix(labels, 8, 3).tolist() == list(range(8))
