"""Decoded CIFAR-10 arrays, the checks every source passes, and their conversion to splits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxbd.data.cifar10.formats import CLASS_NAMES, IMAGE_SHAPE, NUM_CLASSES
from jaxbd.data.dataset import DataError, Dataset, DataSplits


@dataclasses.dataclass(frozen=True)
class Decoded:
    """Decoded arrays, what they were decoded from, and whether they came from the cache.

    Attributes:
        train_images: uint8[N, 32, 32, 3].
        train_labels: int32[N].
        test_images: uint8[M, 32, 32, 3].
        test_labels: int32[M].
        form: what was decoded, e.g. "python archive" or "image-folder .tgz". It depends on
            the content only, so it is cached with the arrays.
        source: the full source string of the load that decoded the arrays (set on cache
            reads; a new load records its own origin).
        cache_file: the cache file the arrays were read from, or None if just decoded.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    form: str
    source: str = ""
    cache_file: Path | None = None

    def to_splits(self, source: str) -> DataSplits:
        """The arrays as validated `DataSplits`, recording `source` (and the cache file)."""
        if self.cache_file is not None:
            source = f"{source}; cached {self.cache_file}"
        kwargs = dict(num_classes=NUM_CLASSES, class_names=CLASS_NAMES, source=source)
        train = Dataset(self.train_images, self.train_labels, **kwargs)
        test = Dataset(self.test_images, self.test_labels, **kwargs)
        return DataSplits(train=train, test=test, source=source)


def check_image_shape(images: np.ndarray, where) -> None:
    """Raises a DataError unless `images` is uint8[N, 32, 32, 3]; `where` names the source."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(
            f"unexpected CIFAR-10 images in {where}: expected uint8[N, 32, 32, 3], found "
            f"{images.dtype}{list(images.shape)}"
        )


def check_labels(labels: np.ndarray, where) -> None:
    """Raises a DataError for any label outside [0, 10); `where` names the source."""
    bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if bad.size:
        raise DataError(
            f"labels outside [0, {NUM_CLASSES}) in {where}: {bad.size} of {labels.size} "
            f"labels (e.g. {int(bad[0])})"
        )
