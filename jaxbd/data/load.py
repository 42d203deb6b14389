"""The config-facing entry point: `load_dataset(settings)`, with `settings = config.data`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from jaxbd.data.cifar10 import load_cifar10
from jaxbd.data.dataset import DataError, Dataset, DataSplits
from jaxbd.data.settings import DATASETS, DataSettings
from jaxbd.data.stratify import stratified_prefix
from jaxbd.data.synthetic import make_synthetic
from jaxbd.settings import from_config

__all__ = ["DATASETS", "load_dataset"]


def load_dataset(settings: DataSettings | Mapping) -> DataSplits:
    """Loads the dataset the settings name.

    Args:
        settings: the data settings; a `config.data` ConfigDict (or any mapping of some of
            its fields) is converted with `from_config(DataSettings, settings, "config.data")`.
            `name` picks the dataset; CIFAR-10 reads `path`, `source` and `cache_dir`;
            synthetic data `num_train`, `num_test`, `num_classes`, `image_size`, `seed` and
            `noise`. For any dataset `train_limit` and `test_limit` (None: all) keep a
            class-stratified prefix of n examples: class c contributes its first n_c·n/N
            examples in canonical order (largest-remainder rounding), so the class balance is
            kept even for copies stored class by class (image folders).

    Returns:
        The train and test sets, with their source recorded.

    Raises:
        ConfigError: (`jaxbd.settings.ConfigError`) for an unknown field or an invalid value
            in a config section, naming `config.data.<field>`.
        DataError: a limit above the number of examples, or any loading error.
    """
    if not isinstance(settings, DataSettings):
        settings = from_config(DataSettings, settings, "config.data")
    splits = _load(settings)
    if settings.train_limit is None and settings.test_limit is None:
        return splits
    train = _take(splits.train, settings.train_limit, "train_limit")
    test = _take(splits.test, settings.test_limit, "test_limit")
    return DataSplits(train=train, test=test, source=f"{splits.source} | {train.source}")


def _take(dataset: Dataset, limit: int | None, name: str) -> Dataset:
    """The class-stratified first `limit` examples of `dataset` (all of it for None)."""
    if limit is None:
        return dataset
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise DataError(f"data.{name} must be None or a positive int, got {limit!r}")
    if limit > len(dataset):
        raise DataError(f"data.{name}={limit} exceeds the {len(dataset)} examples available")
    keep = stratified_prefix(dataset.labels, limit, dataset.num_classes)
    return dataclasses.replace(
        dataset,
        images=dataset.images[keep],
        labels=dataset.labels[keep],
        source=f"class-stratified first {limit} of {len(dataset)}",
    )


def _load(s: DataSettings) -> DataSplits:
    if s.name == "cifar10":
        return load_cifar10(s.path, source=s.source, cache_dir=s.cache_dir)
    if s.name == "synthetic":
        return make_synthetic(
            s.num_train,
            s.num_test,
            num_classes=s.num_classes,
            image_size=s.image_size,
            seed=s.seed,
            noise=s.noise,
        )
    # Unreachable for validated settings; a dataset added to DATASETS needs a branch here.
    raise DataError(f"no loader for data.name {s.name!r}; known: {DATASETS}")
