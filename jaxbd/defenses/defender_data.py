"""The defender's data: a small clean subset of the training images, with a held-out part.

A post-training defense gets a few clean, correctly labelled images — a fraction `r` of the
training-set size (Pick your Poison's r ∈ {1%, 2.5%, 5%}) or `per_class` images of each class
— drawn from the training images that were *not* poisoned, with their true labels, by a PRNG
stream of its own. They are split per class into a tuning part and a held-out validation
part (at least one image per class). Every decision a defense makes (when to stop, how much
to prune, which label is flagged) reads the validation part only; the test set is for
reporting.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxbd.data import DataError, Dataset
from jaxbd.data.stratify import class_budgets
from jaxbd.settings import require


@dataclasses.dataclass(frozen=True, kw_only=True)
class DefenderDataSettings:
    """How much clean data the defender has.

    Attributes:
        fraction: r, the defender's images as a fraction of the training-set size, in
            [0, 1]; used when `per_class` is None. 0: no data, for data-free repairs only.
        per_class: images per class (overrides `fraction`); None: use `fraction`.
        val_fraction: the held-out part, per class, in (0, 1) (at least one image).
    """

    fraction: float = 0.01
    per_class: int | None = None
    val_fraction: float = 0.1

    def __post_init__(self):
        require(0 <= self.fraction <= 1, "fraction", "must be in [0, 1]", self.fraction)
        require(
            self.per_class is None or (isinstance(self.per_class, int) and self.per_class >= 2),
            "per_class",
            "must be None or an integer >= 2 (one to tune on, one to validate)",
            self.per_class,
        )
        require(0 < self.val_fraction < 1, "val_fraction", "must be in (0, 1)", self.val_fraction)


@dataclasses.dataclass(frozen=True)
class DefenderData:
    """The defender's images.

    Attributes:
        tune: the tuning part (clean images, true labels).
        val: the held-out validation part.
        tune_indices: int32[T] their canonical training-set indices.
        val_indices: int32[V].
    """

    tune: Dataset
    val: Dataset
    tune_indices: np.ndarray
    val_indices: np.ndarray

    def __len__(self) -> int:
        return len(self.tune_indices) + len(self.val_indices)

    @property
    def empty(self) -> bool:
        """No images (a data-free repair's defender)."""
        return len(self) == 0


def defender_data(
    key: jax.Array,
    train: Dataset,
    is_poison: np.ndarray,
    settings: DefenderDataSettings = DefenderDataSettings(),
) -> DefenderData:
    """Draws the defender's images from the clean training images.

    Args:
        key: the defender's own PRNG stream.
        train: the *clean* training set (true labels, unpoisoned images).
        is_poison: bool[N], the poisoned examples, never drawn.
        settings: how many images, and the validation split.

    Returns:
        The tuning and validation parts, stratified by class, in canonical order.

    Raises:
        ValueError: if the defender would need more images of a class than it has clean
            ones, or a class would have no validation image.
    """
    n, c = len(train), train.num_classes
    clean = ~np.asarray(is_poison, bool)
    if settings.per_class is None and settings.fraction == 0:
        none = np.zeros(0, np.int32)
        return DefenderData(
            tune=_subset(train, none, "defender tuning"),
            val=_subset(train, none, "defender validation"),
            tune_indices=none,
            val_indices=none,
        )
    if settings.per_class is not None:
        budgets = np.full(c, settings.per_class, np.int64)
    else:
        total = max(2 * c, round(settings.fraction * n))
        budgets = np.asarray(class_budgets(train.labels[clean], total, c), np.int64)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    tune, val = [], []
    for label in range(c):
        pool = np.flatnonzero(clean & (train.labels == label))
        if budgets[label] > len(pool):
            raise ValueError(
                f"the defender needs {budgets[label]} clean images of class {label}, but the "
                f"training set has {len(pool)}"
            )
        if budgets[label] < 2:
            raise ValueError(
                f"class {label} gets {budgets[label]} defender image(s); at least 2 are needed "
                "(one to tune on, one to validate): raise the fraction or per_class"
            )
        chosen = rng.choice(pool, size=budgets[label], replace=False)
        held = max(1, round(settings.val_fraction * budgets[label]))
        held = min(held, budgets[label] - 1)
        val.append(chosen[:held])
        tune.append(chosen[held:])
    tune_idx = np.sort(np.concatenate(tune)).astype(np.int32)
    val_idx = np.sort(np.concatenate(val)).astype(np.int32)
    return DefenderData(
        tune=_subset(train, tune_idx, "defender tuning"),
        val=_subset(train, val_idx, "defender validation"),
        tune_indices=tune_idx,
        val_indices=val_idx,
    )


def _subset(train: Dataset, indices: np.ndarray, what: str) -> Dataset:
    return dataclasses.replace(
        train,
        images=train.images[indices],
        labels=train.labels[indices],
        source=f"{train.source} | {what}: {len(indices)} images",
    )


def own_defender(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    key: jax.Array,
    val_fraction: float = 0.1,
) -> DefenderData:
    """A defender from one's own clean images: all of them, split per class into a tuning
    part and a held-out part (at least one image of each class), by `key`.

    Args:
        images: uint8[N, H, W, 3] clean images.
        labels: int[N] their true labels.
        num_classes: C.
        key: the split's PRNG key.
        val_fraction: the held-out part per class, in (0, 1).

    Raises:
        ValueError: a class with fewer than two images, or bad arrays.
    """
    try:
        own = Dataset(
            images=np.asarray(images),
            labels=np.asarray(labels),
            num_classes=num_classes,
            source="the defender's own images",
        )
    except DataError as e:
        raise ValueError(str(e)) from None
    settings = DefenderDataSettings(fraction=1.0, val_fraction=val_fraction)
    return defender_data(key, own, np.zeros(len(own), bool), settings)
