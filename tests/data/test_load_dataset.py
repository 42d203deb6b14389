"""The config-facing dispatcher `load_dataset(config.data)`."""

import numpy as np
import pytest

from jaxbd import configs
from jaxbd.data import DataError, load_dataset, make_synthetic


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


def test_unknown_name_lists_the_choices():
    with pytest.raises(DataError, match=r"unknown data.name 'mnist'.*cifar10.*synthetic"):
        load_dataset(_data_config(name="mnist"))


def test_unknown_source_lists_the_choices():
    with pytest.raises(DataError, match=r"unknown data.source 'web'.*auto.*path.*download"):
        load_dataset(_data_config(source="web"))


def test_cifar10_path_errors_surface(tmp_path):
    config = _data_config(path=str(tmp_path / "missing"), cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(config)
