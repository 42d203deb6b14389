"""Datasets as uint8 arrays in canonical order, their sources, and on-device augmentation.

`from jaxbd import data` gives the dataset types, the loaders, the settings, and the
augmentation module (`data.augment`), whose functions are also re-exported here.

The augmentation names are imported on first use (PEP 562): they need JAX, the loaders do
not, so loading data (in a PyTorch baseline, or in the image decoder's worker processes) does
not pay for importing JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from jaxbd.data.cifar10 import load_cifar10
from jaxbd.data.dataset import DataError, Dataset, DataSplits
from jaxbd.data.load import DATASETS, load_dataset
from jaxbd.data.settings import DataSettings
from jaxbd.data.stratify import stratified_prefix
from jaxbd.data.synthetic import make_synthetic

if TYPE_CHECKING:
    from jaxbd.data import augment
    from jaxbd.data.augment import CIFAR10_MEAN, CIFAR10_STD, normalize, random_crop, random_flip
    from jaxbd.data.augment import augment as augment_batch

# name → (module, attribute in it; None: the module itself), imported on first access.
_LAZY = {
    "augment": ("jaxbd.data.augment", None),
    "augment_batch": ("jaxbd.data.augment", "augment"),
    "CIFAR10_MEAN": ("jaxbd.data.augment", "CIFAR10_MEAN"),
    "CIFAR10_STD": ("jaxbd.data.augment", "CIFAR10_STD"),
    "normalize": ("jaxbd.data.augment", "normalize"),
    "random_crop": ("jaxbd.data.augment", "random_crop"),
    "random_flip": ("jaxbd.data.augment", "random_flip"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "DataError",
    "DataSettings",
    "DataSplits",
    "Dataset",
    "augment",
    "augment_batch",
    "load_cifar10",
    "load_dataset",
    "make_synthetic",
    "normalize",
    "random_crop",
    "random_flip",
    "stratified_prefix",
]
