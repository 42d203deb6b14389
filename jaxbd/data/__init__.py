"""Datasets as uint8 arrays in canonical order, their sources, and on-device augmentation.

`from jaxbd import data` gives the dataset types, the loaders, and the augmentation module
(`data.augment`), whose functions are also re-exported here.
"""

from jaxbd.data import augment
from jaxbd.data.augment import CIFAR10_MEAN, CIFAR10_STD, normalize, random_crop, random_flip
from jaxbd.data.augment import augment as augment_batch
from jaxbd.data.cifar10 import load_cifar10
from jaxbd.data.dataset import DataError, Dataset, DataSplits
from jaxbd.data.load import DATASETS, load_dataset
from jaxbd.data.settings import DataSettings
from jaxbd.data.synthetic import make_synthetic

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
]
