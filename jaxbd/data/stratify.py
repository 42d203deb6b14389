"""Class-proportional budgets and the class-stratified prefix of a dataset.

Splitting a total over classes in proportion to their sizes is shared by the data limits
(`config.data.train_limit`) and every per-class selection method, so it lives at the data
level, below both.
"""

from __future__ import annotations

import numpy as np


def class_budgets(labels, total: int, num_classes: int | None = None) -> np.ndarray:
    """Splits `total` over classes in proportion to their sizes, summing exactly to `total`.

    Largest-remainder (Hamilton) apportionment: class c first gets ⌊total · n_c / N⌋, then
    the leftover units go one each to the classes with the largest fractional parts (ties:
    the larger class, then the lower class index). No class gets more than its size, and an
    empty class gets 0.

    Args:
        labels: int[N] observed labels in [0, C).
        total: the total budget, in [0, N].
        num_classes: C; defaults to max(labels) + 1.

    Returns:
        int64[C] budgets with `budgets.sum() == total` and `budgets <= class sizes`.

    Raises:
        ValueError: for a total outside [0, N] or labels outside [0, C).
    """
    labels = np.asarray(labels).reshape(-1)
    n = labels.size
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if n else 0
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    if isinstance(total, bool) or not isinstance(total, int | np.integer) or not 0 <= total <= n:
        raise ValueError(f"total must be an int in [0, {n}], got {total!r}")
    sizes = np.bincount(labels, minlength=num_classes).astype(np.int64)
    if n == 0:
        return sizes
    # Exact integer arithmetic: quotient and remainder of total · n_c / N.
    quotas, remainders = np.divmod(sizes * int(total), n)
    leftover = int(total - quotas.sum())
    # Largest remainder first; ties to the larger class, then the lower index.
    order = np.lexsort((np.arange(num_classes), -sizes, -remainders))
    quotas[order[:leftover]] += 1
    return quotas


def stratified_prefix(labels, total: int, num_classes: int | None = None) -> np.ndarray:
    """The indices of a class-stratified prefix: each class's first `class_budgets` members.

    A plain prefix of a copy stored class by class (image folders) would drop whole classes;
    this one keeps the class balance while still taking examples in canonical order.

    Args:
        labels: int[N] labels in [0, C).
        total: how many examples to keep, in [0, N].
        num_classes: C; defaults to max(labels) + 1.

    Returns:
        int64[total] indices in increasing (canonical) order.
    """
    labels = np.asarray(labels).reshape(-1)
    budgets = class_budgets(labels, total, num_classes)
    members = [np.flatnonzero(labels == c)[:b] for c, b in enumerate(budgets)]
    return np.sort(np.concatenate([np.zeros(0, np.int64), *members]))
