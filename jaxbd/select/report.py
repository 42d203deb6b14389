"""The poison-aware selection report: which poisons a selection kept, per class.

Removing examples is also a (crude) poison detector: the removed set's precision (how many
removed examples were poisons) and recall (how many poisons were removed) say how well a
selection method doubles as a data-cleansing defense.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxbd import metrics


def selection_report(
    selected_indices, is_poison, original_labels, num_classes: int
) -> dict[str, Any]:
    """Summarizes a selection against the poisoning ground truth.

    Args:
        selected_indices: int[k] kept example indices.
        is_poison: bool[N], True for poisoned examples.
        original_labels: int[N] labels before poisoning: per-class figures are by the class
            a poison came from (after a dirty-label attack every poison is labelled with the
            target, which would put them all in one class).
        num_classes: C.

    Returns:
        A JSON-ready dict: `num_selected`, `num_removed`, `poison_total`, `poison_kept`,
        `poison_removed`, `poison_retention` (kept / total; None without poisons),
        `clean_removed`, `removed_precision` and `removed_recall` (the removed set as a
        poison detector; None when undefined: nothing removed, no poisons), and per
        class (lists of length C):
        `poison_total_per_class`, `poison_kept_per_class`, `poison_retention_per_class`
        (None where a class had no poisons), `selected_per_class`.

    Raises:
        ValueError: for out-of-range or duplicate indices or mismatched lengths.
    """
    is_poison = np.asarray(is_poison, bool).reshape(-1)
    original_labels = np.asarray(original_labels).reshape(-1)
    n = is_poison.size
    if original_labels.shape != (n,):
        raise ValueError(f"{original_labels.size} labels for {n} poison flags")
    selected = np.asarray(selected_indices).reshape(-1)
    if selected.size and (selected.min() < 0 or selected.max() >= n):
        raise ValueError(f"selected indices must be in [0, {n})")
    kept = np.zeros(n, bool)
    kept[selected] = True
    if int(kept.sum()) != selected.size:
        raise ValueError("selected indices must be distinct")

    removed = ~kept
    poison_total = int(is_poison.sum())
    poison_kept = int((is_poison & kept).sum())
    poison_removed = poison_total - poison_kept
    num_removed = int(removed.sum())
    total_per_class = np.bincount(original_labels[is_poison], minlength=num_classes)
    kept_per_class = np.bincount(original_labels[is_poison & kept], minlength=num_classes)
    return {
        "num_selected": int(selected.size),
        "num_removed": num_removed,
        "poison_total": poison_total,
        "poison_kept": poison_kept,
        "poison_removed": poison_removed,
        "poison_retention": float(metrics.poison_retention(is_poison, selected))
        if poison_total
        else None,
        "clean_removed": num_removed - poison_removed,
        "removed_precision": poison_removed / num_removed if num_removed else None,
        "removed_recall": poison_removed / poison_total if poison_total else None,
        "poison_total_per_class": total_per_class.tolist(),
        "poison_kept_per_class": kept_per_class.tolist(),
        "poison_retention_per_class": [
            float(k / t) if t else None
            for k, t in zip(kept_per_class, total_per_class, strict=True)
        ],
        "selected_per_class": np.bincount(original_labels[kept], minlength=num_classes).tolist(),
    }
