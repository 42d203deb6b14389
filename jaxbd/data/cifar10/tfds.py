"""CIFAR-10 from tensorflow-datasets (optional), restored to the official order by its ids."""

from __future__ import annotations

import numpy as np

from jaxbd.data.cifar10.cache import TFDS_KEY, Cache
from jaxbd.data.cifar10.decoded import Decoded, check_image_shape, check_labels
from jaxbd.data.cifar10.formats import SPLITS
from jaxbd.data.dataset import DataError, DataSplits

SOURCE = "cifar10:tfds"


def load_tfds(data_dir, cache: Cache) -> DataSplits:
    """CIFAR-10 from tensorflow-datasets, in the official order, cached after the first load.

    tfds shuffles the records but keeps each one's official index in its `id` feature
    ("train_16399"), which restores the order.

    Args:
        data_dir: `data_dir` passed to `tfds.load` (None: tfds's default).
        cache: the decoded-array cache.
    """
    if (hit := cache.load(TFDS_KEY)) is not None:
        return hit.to_splits(SOURCE)
    try:
        import tensorflow_datasets as tfds  # optional dependency
    except ImportError as e:
        raise DataError(
            "source='tfds' needs tensorflow-datasets, which is not installed: "
            "pip install 'jaxbd[tfds]' (or pass a local path, or source='download')"
        ) from e
    arrays = []
    for split in SPLITS:
        try:
            data = tfds.as_numpy(
                tfds.load("cifar10", split=split, batch_size=-1, data_dir=data_dir)
            )
        except Exception as e:  # tfds raises assorted errors (not prepared, no network, ...)
            raise DataError(
                f"tensorflow-datasets could not load cifar10 split {split!r} "
                f"(data_dir={data_dir}): {type(e).__name__}: {e}"
            ) from e
        images = np.asarray(data["image"])
        labels = np.asarray(data["label"])
        index = np.array([_tfds_index(i, split) for i in data["id"]])
        if not np.array_equal(np.sort(index), np.arange(len(index))):
            raise DataError(
                f"tfds cifar10 {split} ids are not a permutation of 0..{len(index) - 1}; "
                "cannot restore the official order"
            )
        order = np.argsort(index)
        check_image_shape(images, f"tfds cifar10 {split}")
        check_labels(labels, f"tfds cifar10 {split}")
        arrays += [np.ascontiguousarray(images[order]), labels[order].astype(np.int32)]
    decoded = Decoded(*arrays, form="tfds")
    cache.save(TFDS_KEY, decoded, SOURCE)
    return decoded.to_splits(SOURCE)


def _tfds_index(example_id, split: str) -> int:
    """The official index in an id like "train_16399" (bytes or str)."""
    text = example_id.decode() if isinstance(example_id, bytes) else str(example_id)
    prefix, _, number = text.rpartition("_")
    if prefix != split or not number.isdigit():
        raise DataError(f"unexpected tfds cifar10 id {text!r} in split {split!r}")
    return int(number)
