"""Random subsets, uniform without replacement (per class by default): the baseline every
selection method must beat.

The key must be a stream of its own (the pipeline uses `jaxbd.rng.stream(seed, "select")`):
an earlier study drew its "random" subset with the poisoning seed, so the subset was
correlated with the poisons and kept ~99.5% of them instead of ~50%.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxbd.select.base import Selection, class_budgets, make_selection, num_to_select
from jaxbd.select.method import Inputs, Method


def random_subset(
    key: jax.Array,
    labels,
    fraction: float,
    *,
    per_class: bool = True,
    num_classes: int | None = None,
) -> Selection:
    """A uniform random subset without replacement, unweighted.

    Args:
        key: PRNG key of the selection's own stream.
        labels: int[N] observed labels (used for the per-class budgets).
        fraction: in (0, 1]; the subset has `num_to_select(N, fraction)` examples.
        per_class: draw each class's budget (`class_budgets`) from that class, so class
            proportions are kept exactly; False draws k examples from the whole set.
        num_classes: C; defaults to max(labels) + 1.

    Returns:
        A `Selection` with weights 1.
    """
    labels = np.asarray(labels).reshape(-1)
    total = num_to_select(labels.size, fraction)
    if not per_class:
        chosen = jax.random.choice(key, labels.size, (total,), replace=False)
        return make_selection(np.asarray(chosen))
    budgets = class_budgets(labels, total, num_classes)
    chosen = []
    for c, budget in enumerate(budgets):
        if budget == 0:
            continue
        members = np.flatnonzero(labels == c)
        picks = jax.random.choice(jax.random.fold_in(key, c), members.size, (int(budget),), False)
        chosen.append(members[np.asarray(picks)])
    return make_selection(np.concatenate(chosen) if chosen else np.zeros(0, np.int64))


def _run(inputs: Inputs) -> tuple[Selection, None]:
    selection = random_subset(
        inputs.key, inputs.labels, inputs.fraction, num_classes=inputs.num_classes
    )
    return selection, None


METHOD = Method(selector=random_subset, run=_run, pretrain=False)
"""No data but the labels: no pretraining."""
