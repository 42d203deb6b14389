"""The poison-aware selection report: which poisons a selection kept, per class.

Removing examples is also a (crude) poison detector: the removed set's precision (how many
removed examples were poisons) and recall (how many poisons were removed) say how well a
selection method doubles as a data-cleansing defense.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def selection_report(
    selected_indices, is_poison, original_labels, num_classes: int, *, is_backdoor=None
) -> dict[str, Any]:
    """Summarizes a selection against the poisoning ground truth.

    Args:
        selected_indices: int[k] kept example indices.
        is_poison: bool[N], True for poisoned examples.
        original_labels: int[N] labels before poisoning: per-class figures are by the class
            a poison came from (after a dirty-label attack every poison is labelled with the
            target, which would put them all in one class).
        num_classes: C.
        is_backdoor: bool[N], the backdoor samples among the poisons
            (`jaxbd.attacks.PoisonedDataset.is_backdoor`: the poisons that carry the
            attacker's label, not WaNet's noise samples or other label-keeping poisons).
            None: the backdoor fields are None.

    Returns:
        A JSON-ready dict: `num_selected`, `num_removed`, `poison_total`, `poison_kept`,
        `poison_removed`, `poison_retention` (kept / total; None without poisons),
        `backdoor_total`, `backdoor_kept`, `backdoor_retention` (the same for the backdoor
        samples; all None without `is_backdoor`, the retention None without backdoor
        samples),
        `clean_removed`, `removed_precision` and `removed_recall` (the removed set as a
        poison detector; None when undefined: nothing removed, no poisons), and per
        class (lists of length C):
        `poison_total_per_class`, `poison_kept_per_class`, `poison_retention_per_class`
        (None where a class had no poisons), `selected_per_class`. Every fraction is a
        ratio of integer counts in float64 (Python floats), so a report holds no float32
        rounding noise (0.385, not 0.38499999046325684).

    Raises:
        ValueError: for out-of-range or duplicate indices, mismatched lengths, or backdoor
            flags on examples that are not poisons.
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

    if is_backdoor is not None:
        is_backdoor = np.asarray(is_backdoor, bool).reshape(-1)
        if is_backdoor.shape != (n,):
            raise ValueError(f"{is_backdoor.size} backdoor flags for {n} poison flags")
        if np.any(is_backdoor & ~is_poison):
            raise ValueError("is_backdoor flags examples that are not poisons")
        backdoor_total = int(is_backdoor.sum())
        backdoor_kept = int((is_backdoor & kept).sum())
    else:
        backdoor_total = backdoor_kept = None

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
        # From the integer counts in float64, not metrics.poison_retention's float32.
        "poison_retention": poison_kept / poison_total if poison_total else None,
        "backdoor_total": backdoor_total,
        "backdoor_kept": backdoor_kept,
        "backdoor_retention": backdoor_kept / backdoor_total if backdoor_total else None,
        "clean_removed": num_removed - poison_removed,
        "removed_precision": poison_removed / num_removed if num_removed else None,
        "removed_recall": poison_removed / poison_total if poison_total else None,
        "poison_total_per_class": total_per_class.tolist(),
        "poison_kept_per_class": kept_per_class.tolist(),
        "poison_retention_per_class": [
            int(k) / int(t) if t else None
            for k, t in zip(kept_per_class, total_per_class, strict=True)
        ],
        "selected_per_class": np.bincount(original_labels[kept], minlength=num_classes).tolist(),
    }
