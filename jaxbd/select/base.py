"""What every selector returns, and how a total budget is split over classes.

Selection is per class by default (by the *observed*, possibly poisoned, label): class c with
n_c members gets a budget k_c proportional to n_c, and the budgets sum exactly to the requested
total k (docs/methods.md, "Common rules"). Indices are canonical example indices, so they line
up with poison flags, scores and forgetting counts.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Re-exported: the selectors split their budgets by class; the function lives with the data
# limits, which use it too, so that jaxbd.data needs nothing from jaxbd.select.
from jaxbd.data.stratify import class_budgets as class_budgets


class Selection(NamedTuple):
    """A weighted subset of a dataset.

    Attributes:
        indices: int32[k] selected example indices, in increasing (canonical) order.
        weights: float32[k] per-example weights, aligned with `indices`. 1 for unweighted
            methods; CRAIG's cluster sizes otherwise. Training normalizes them to mean 1.
    """

    indices: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def make_selection(indices, weights=None) -> Selection:
    """A `Selection` in canonical order: sorts `indices` (and `weights` along with them).

    Args:
        indices: int[k] distinct example indices, in any order.
        weights: optional float[k] weights aligned with `indices`; ones when None.

    Raises:
        ValueError: for duplicate indices, mismatched lengths or negative weights.
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    weights = (
        np.ones(indices.shape, np.float32)
        if weights is None
        else np.asarray(weights, np.float32).reshape(-1)
    )
    if weights.shape != indices.shape:
        raise ValueError(f"{weights.shape[0]} weights for {indices.shape[0]} indices")
    order = np.argsort(indices, kind="stable")
    indices, weights = indices[order], weights[order]
    if indices.size > 1 and np.any(indices[1:] == indices[:-1]):
        raise ValueError("selected indices must be distinct")
    if np.any(weights < 0) or not np.all(np.isfinite(weights)):
        raise ValueError("selection weights must be finite and non-negative")
    return Selection(indices=indices.astype(np.int32), weights=weights)


def num_to_select(num_examples: int, fraction: float) -> int:
    """The total budget k = round(fraction · N) (Python rounding), at least 1.

    Raises:
        ValueError: for a fraction outside (0, 1].
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float | np.floating):
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if not 0.0 < fraction <= 1.0:  # also rejects NaN
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, min(num_examples, round(fraction * num_examples)))
