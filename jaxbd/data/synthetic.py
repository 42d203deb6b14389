"""Class-conditional synthetic images for tests and smoke runs (pure NumPy, fast).

Each class has a smooth colour pattern: per channel, a sum of a few low-frequency 2-D
sinusoids with frequencies and phases drawn from the seed. An image is its class pattern seen
through a randomly shifted window, with per-image contrast and brightness jitter and i.i.d.
pixel noise. The classes are separable by shape and colour, so a small CNN learns them within
a couple of epochs, but the jitter and noise keep one step from being enough; a BadNets patch
is then a distinct, learnable feature on top.
"""

from __future__ import annotations

import numpy as np

from jaxbd.data.dataset import DataError, Dataset, DataSplits

_WAVES_PER_CHANNEL = 3
# Cycles per image side. Low, so that a shift of up to 1/8 of the image keeps the class
# identity (a CNN has to be roughly shift-invariant, as on real data, but not more).
_MAX_FREQUENCY = 2.0
_CONTRAST = (0.6, 1.0)  # multiplies the pattern's amplitude
_BRIGHTNESS = (-0.15, 0.15)  # added to every pixel, in [0, 1] pixel units
_AMPLITUDE = 0.35  # pattern peak deviation from mid-grey, in [0, 1] pixel units
MIN_CLASSES = 2  # a classification task needs two
MIN_IMAGE_SIZE = 4  # below this the class patterns and a trigger patch no longer fit


def _class_patterns(
    rng: np.random.Generator, num_classes: int, size: int, margin: int
) -> np.ndarray:
    """float32[C, S + 2m, S + 2m, 3]: one pattern per class, scaled to peak |value| 1.

    The canvas is larger than the image by `margin` on each side so that shifted windows see
    the pattern continue rather than wrap around.
    """
    coords = (np.arange(size + 2 * margin, dtype=np.float32) - margin) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    freqs = rng.uniform(-_MAX_FREQUENCY, _MAX_FREQUENCY, (num_classes, 3, _WAVES_PER_CHANNEL, 2))
    phases = rng.uniform(0, 2 * np.pi, (num_classes, 3, _WAVES_PER_CHANNEL))
    # [C, 3, K, S', S'] waves summed over K, then channels moved last.
    arg = freqs[..., 0, None, None] * yy + freqs[..., 1, None, None] * xx
    waves = np.cos(2 * np.pi * arg + phases[..., None, None]).sum(axis=2)
    patterns = np.moveaxis(waves, 1, -1).astype(np.float32)
    patterns /= np.abs(patterns).max(axis=(1, 2, 3), keepdims=True)
    return patterns


def _render(
    rng: np.random.Generator,
    patterns: np.ndarray,
    labels: np.ndarray,
    size: int,
    margin: int,
    noise: float,
) -> np.ndarray:
    """uint8[N, S, S, 3]: shifted, jittered, noisy views of each label's pattern."""
    n = labels.shape[0]
    offsets = rng.integers(0, 2 * margin + 1, (n, 2))
    contrast = rng.uniform(*_CONTRAST, (n, 1, 1, 1)).astype(np.float32)
    brightness = rng.uniform(*_BRIGHTNESS, (n, 1, 1, 1)).astype(np.float32)
    rows = offsets[:, 0, None] + np.arange(size)  # [N, S]
    cols = offsets[:, 1, None] + np.arange(size)
    # One gather for all images: window [r:r+S, c:c+S] of pattern labels[i].
    views = patterns[labels[:, None, None], rows[:, :, None], cols[:, None, :]]
    images = 0.5 + _AMPLITUDE * contrast * views + brightness
    # `noise` is relative to half the pixel range, so noise=1 is as strong as a full pattern.
    images += (0.5 * noise) * rng.standard_normal(images.shape, dtype=np.float32)
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


def _balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """int32[n]: round-robin labels (class counts differ by at most one), shuffled."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int32)


def make_synthetic(
    num_train: int = 2048,
    num_test: int = 512,
    *,
    num_classes: int = 10,
    image_size: int = 32,
    seed: int = 0,
    noise: float = 0.25,
) -> DataSplits:
    """A synthetic classification dataset with balanced classes.

    Args:
        num_train: N_train, training images.
        num_test: N_test, test images.
        num_classes: C.
        image_size: S; images are uint8[S, S, 3].
        seed: determines the class patterns and every image.
        noise: standard deviation of the i.i.d. Gaussian pixel noise, relative to half the
            pixel range (0.25: σ ≈ 32 grey levels).

    Returns:
        DataSplits whose train and test sets have `images: uint8[N, S, S, 3]` and
        `labels: int32[N]`, drawn from the same class patterns.

    Raises:
        DataError: on a non-positive size, fewer than 2 classes, or negative noise.
    """
    if num_train < 1 or num_test < 1:
        raise DataError(
            f"need at least one train and one test image, got num_train={num_train}, "
            f"num_test={num_test}"
        )
    if num_classes < MIN_CLASSES:
        raise DataError(f"need at least {MIN_CLASSES} classes, got num_classes={num_classes}")
    if image_size < MIN_IMAGE_SIZE:
        raise DataError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    if noise < 0:
        raise DataError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    margin = image_size // 8
    patterns = _class_patterns(rng, num_classes, image_size, margin)
    source = (
        f"synthetic(num_train={num_train}, num_test={num_test}, classes={num_classes}, "
        f"size={image_size}, seed={seed}, noise={noise})"
    )
    sets = []
    for n in (num_train, num_test):
        labels = _balanced_labels(rng, n, num_classes)
        images = _render(rng, patterns, labels, image_size, margin, noise)
        sets.append(Dataset(images, labels, num_classes, source=source))
    return DataSplits(train=sets[0], test=sets[1], source=source)
