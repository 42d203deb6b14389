"""Synthetic data: shapes, balance, determinism, and learnable-but-not-trivial classes."""

import numpy as np
import pytest

from jaxbd.data import DataError, make_synthetic


def test_shapes_dtypes_and_source():
    splits = make_synthetic(100, 30, num_classes=4, image_size=16, seed=3)
    assert splits.train.images.shape == (100, 16, 16, 3)
    assert splits.test.images.shape == (30, 16, 16, 3)
    assert splits.train.images.dtype == np.uint8 and splits.train.labels.dtype == np.int32
    assert splits.train.num_classes == 4
    assert splits.source == (
        "synthetic(num_train=100, num_test=30, classes=4, size=16, seed=3, noise=0.25)"
    )
    assert splits.train.source == splits.source


def test_labels_are_balanced_and_shuffled():
    splits = make_synthetic(1003, 10, num_classes=10)
    counts = splits.train.class_counts()
    assert counts.max() - counts.min() <= 1
    assert not np.array_equal(splits.train.labels, np.arange(1003) % 10)


def test_deterministic_given_the_seed():
    a, b, c = make_synthetic(64, 16, seed=1), make_synthetic(64, 16, seed=1), make_synthetic(64, 16)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert not np.array_equal(a.train.images, c.train.images)


def test_images_of_one_class_vary():
    splits = make_synthetic(200, 10, noise=0.0)
    same = splits.train.images[splits.train.labels == 0]
    assert len({x.tobytes() for x in same}) == len(same)  # shift and jitter even without noise
    assert splits.train.images.std() > 20  # real structure, not a flat grey


def test_classes_are_learnable_but_not_trivially():
    splits = make_synthetic()
    x = splits.train.images.reshape(len(splits.train), -1).astype(np.float32)
    xt = splits.test.images.reshape(len(splits.test), -1).astype(np.float32)
    centroids = np.stack([x[splits.train.labels == c].mean(0) for c in range(10)])
    dist = ((xt[:, None] - centroids[None]) ** 2).sum(-1)
    accuracy = (dist.argmin(1) == splits.test.labels).mean()
    # Nearest class mean is far above chance (0.1), but shifts and noise keep it imperfect.
    assert 0.5 < accuracy < 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_train": 0},
        {"num_test": 0},
        {"num_classes": 1},
        {"image_size": 2},
        {"noise": -0.1},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(DataError):
        make_synthetic(**kwargs)
