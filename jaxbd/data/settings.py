"""`DataSettings`: the `config.data` section as a frozen, self-validating dataclass.

Its defaults are the config's (`jaxbd.configs.base_config().data` is derived from them by
`jaxbd.settings.config_section`); `from_config(DataSettings, config.data, "config.data")`
turns a bad value into a `ConfigError` naming the field before any data is read. The choice
lists come from the registries (`DATASETS` here, CIFAR-10's `SOURCES`), so a new dataset or
source is valid as soon as it is registered.
"""

from __future__ import annotations

import dataclasses
import math
import os

from jaxbd.data.cifar10.formats import CIFAR10_MEAN, CIFAR10_STD, SOURCES
from jaxbd.data.synthetic import MIN_CLASSES, MIN_IMAGE_SIZE
from jaxbd.settings import require

DATASETS = ("cifar10", "synthetic")
"""The dataset names `load_dataset` knows."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSettings:
    """Which dataset to load, how much of it, and how to normalize it.

    Attributes:
        name: one of `DATASETS`.
        path: a local CIFAR-10 copy (see `jaxbd.data.cifar10`); None: cache, tfds, download.
        source: one of CIFAR-10's `SOURCES` ("auto", "path", "download", "tfds").
        cache_dir: where decoded arrays and downloads are kept; None: `$JAXBD_CACHE` or
            `~/.cache/jaxbd`.
        train_limit: keep a class-stratified prefix of this many training examples (None:
            all); see `jaxbd.data.stratify.stratified_prefix`.
        test_limit: the same for the test set.
        mean: per-channel normalization mean, 3 values in [0, 1] pixel units.
        std: per-channel normalization standard deviation, 3 positive values.
        num_train: synthetic data only: N_train.
        num_test: synthetic data only: N_test.
        num_classes: synthetic data only: C.
        image_size: synthetic data only: S (images are S x S x 3).
        seed: synthetic data only: determines every image.
        noise: synthetic data only: pixel-noise standard deviation, relative to half the
            pixel range.
    """

    name: str = "cifar10"
    path: str | None = None
    source: str = "auto"
    cache_dir: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD
    num_train: int = 2048
    num_test: int = 512
    num_classes: int = 10
    image_size: int = 32
    seed: int = 0
    noise: float = 0.25

    def __post_init__(self):
        require(self.name in DATASETS, "name", f"must be one of {list(DATASETS)}", self.name)
        require(self.source in SOURCES, "source", f"must be one of {list(SOURCES)}", self.source)
        for field in ("path", "cache_dir"):
            value = getattr(self, field)
            require(
                value is None or isinstance(value, str | os.PathLike),
                field,
                "must be None or a path",
                value,
            )
        for field in ("train_limit", "test_limit"):
            value = getattr(self, field)
            require(value is None or _is_int(value, 1), field, "must be None or an int >= 1", value)
        require(_is_triple(self.mean), "mean", "must be 3 finite numbers", self.mean)
        std_ok = _is_triple(self.std) and all(v > 0 for v in self.std)
        require(std_ok, "std", "must be 3 finite numbers > 0", self.std)
        for field, low in (
            ("num_train", 1),
            ("num_test", 1),
            ("num_classes", MIN_CLASSES),
            ("image_size", MIN_IMAGE_SIZE),
        ):
            value = getattr(self, field)
            require(_is_int(value, low), field, f"must be an int >= {low}", value)
        require(_is_int(self.seed, None), "seed", "must be an int", self.seed)
        require(_is_number(self.noise) and self.noise >= 0, "noise", "must be >= 0", self.noise)


def _is_int(value, low: int | None) -> bool:
    # bool is an int subclass, but `train_limit=True` is a mistake, not a limit of 1.
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and (low is None or value >= low)


def _is_number(value) -> bool:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return ok and math.isfinite(value)


def _is_triple(values) -> bool:
    """Three finite numbers (one per channel)."""
    return (
        isinstance(values, tuple | list) and len(values) == 3 and all(_is_number(v) for v in values)
    )
