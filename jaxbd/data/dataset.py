"""The in-memory dataset type every jaxbd component consumes.

A dataset is a pair of host (NumPy) arrays in canonical order — `images: uint8[N, H, W, 3]`
and `labels: int32[N]` — plus the number of classes and a human-readable record of where the
data came from. Every per-example quantity elsewhere in jaxbd (poison flags, scores,
selection weights) is indexed by the position in these arrays, so nothing here ever reorders
examples.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class DataError(ValueError):
    """A dataset is missing, corrupt, or does not have the expected shape or labels."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Images and labels in canonical order, validated on construction.

    Attributes:
        images: uint8[N, H, W, 3] pixel values.
        labels: int32[N] class indices in [0, num_classes).
        num_classes: C, the number of classes.
        class_names: optional tuple of C names in label order.
        source: where the data came from (path, URL, "tfds:cifar10", "synthetic(...)"),
            recorded in every run's metadata.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None = None
    source: str = "unknown"

    def __post_init__(self):
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise DataError(
                f"images must be a uint8 NumPy array, got "
                f"{type(images).__name__} of dtype {getattr(images, 'dtype', None)} "
                f"(source: {self.source})"
            )
        if images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(
                f"images must have shape [N, H, W, 3], got {images.shape} (source: {self.source})"
            )
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                f"labels must have shape [{images.shape[0]}] to match the images, got "
                f"{labels.shape} (source: {self.source})"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"labels must be integers, got dtype {labels.dtype}")
        if self.num_classes < 1:
            raise DataError(f"num_classes must be positive, got {self.num_classes}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)]
            raise DataError(
                f"labels must lie in [0, {self.num_classes}); found {bad.size} outside it "
                f"(e.g. {int(bad[0])}) (source: {self.source})"
            )
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise DataError(
                f"class_names has {len(self.class_names)} entries for {self.num_classes} classes"
            )
        object.__setattr__(self, "labels", labels.astype(np.int32, copy=False))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, 3)."""
        return tuple(self.images.shape[1:])

    def class_counts(self) -> np.ndarray:
        """int64[C]: number of examples per class."""
        return np.bincount(self.labels, minlength=self.num_classes)


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """A training and a test set from the same source.

    Attributes:
        train: the training set.
        test: the test set (same image shape and classes as `train`).
        source: where both came from, e.g. "path:/data/cifar10 (image folders, .tgz)".
    """

    train: Dataset
    test: Dataset
    source: str

    def __post_init__(self):
        if self.train.image_shape != self.test.image_shape:
            raise DataError(
                f"train and test image shapes differ: {self.train.image_shape} vs "
                f"{self.test.image_shape}"
            )
        if self.train.num_classes != self.test.num_classes:
            raise DataError(
                f"train and test class counts differ: {self.train.num_classes} vs "
                f"{self.test.num_classes}"
            )
