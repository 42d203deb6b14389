"""The config-facing entry point: `load_dataset(config.data)`."""

from __future__ import annotations

import ml_collections

from jaxbd.data.cifar10 import SOURCES, load_cifar10
from jaxbd.data.dataset import DataError, DataSplits
from jaxbd.data.synthetic import make_synthetic

DATASETS = ("cifar10", "synthetic")


def load_dataset(data_config: ml_collections.ConfigDict) -> DataSplits:
    """Loads the dataset a config names.

    Args:
        data_config: `config.data` (see `jaxbd.configs.base_config`): `name`; for CIFAR-10
            `path` (str or None), `source` (one of `SOURCES`) and `cache_dir` (str or None);
            for synthetic data `num_train`, `num_test`, `num_classes`, `image_size`, `seed`
            and `noise`.

    Returns:
        The train and test sets, with their source recorded.

    Raises:
        DataError: an unknown dataset name or source, or any loading error.
    """
    c = data_config
    if c.name == "cifar10":
        source = c.get("source", "auto")
        if source not in SOURCES:
            raise DataError(f"unknown data.source {source!r}; choose one of {SOURCES}")
        return load_cifar10(c.get("path"), source=source, cache_dir=c.get("cache_dir"))
    if c.name == "synthetic":
        return make_synthetic(
            c.num_train,
            c.num_test,
            num_classes=c.num_classes,
            image_size=c.image_size,
            seed=c.seed,
            noise=c.noise,
        )
    raise DataError(f"unknown data.name {c.name!r}; choose one of {DATASETS}")
