"""Class budgets, selection construction and the random baseline."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxbd.select import Selection, class_budgets, make_selection, num_to_select, random_subset


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=12),
    fraction=st.floats(0.0, 1.0),
)
def test_budgets_sum_exactly_and_stay_proportional(sizes, fraction):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    total = round(fraction * labels.size)
    budgets = class_budgets(labels, total, len(sizes))
    assert budgets.sum() == total
    assert np.all(budgets <= np.array(sizes)) and np.all(budgets >= 0)
    if labels.size:
        exact = np.array(sizes) * total / labels.size
        # Largest remainder: every budget is the floor or the ceiling of its exact quota.
        assert np.all(budgets >= np.floor(exact)) and np.all(budgets <= np.ceil(exact))


def test_budget_example_by_hand():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
    # Quotas for total 5: 2.5, 1.5, 1.0 -> floors 2, 1, 1, one unit left; the remainders of
    # classes 0 and 1 tie, the larger class 0 wins.
    np.testing.assert_array_equal(class_budgets(labels, 5, 3), [3, 1, 1])
    np.testing.assert_array_equal(class_budgets(labels, 0, 4), [0, 0, 0, 0])


def test_budget_errors():
    with pytest.raises(ValueError, match="total must be"):
        class_budgets(np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="labels must be in"):
        class_budgets(np.array([0, 5]), 1, 3)


def test_num_to_select():
    assert num_to_select(50_000, 0.5) == 25_000
    assert num_to_select(10, 0.01) == 1
    for bad in (0.0, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="fraction"):
            num_to_select(10, bad)


def test_make_selection_sorts_and_validates():
    sel = make_selection([5, 1, 3], [0.5, 2.0, 1.0])
    assert isinstance(sel, Selection) and len(sel) == 3
    np.testing.assert_array_equal(sel.indices, [1, 3, 5])
    np.testing.assert_allclose(sel.weights, [2.0, 1.0, 0.5])
    assert sel.indices.dtype == np.int32 and sel.weights.dtype == np.float32
    with pytest.raises(ValueError, match="distinct"):
        make_selection([1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        make_selection([1, 2], [1.0, -1.0])


def test_random_subset_is_per_class_uniform_and_keyed():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    sel = random_subset(jax.random.key(0), labels, 0.5)
    np.testing.assert_array_equal(np.bincount(labels[sel.indices]), [50, 25, 15, 10])
    assert np.all(sel.weights == 1)
    again = random_subset(jax.random.key(0), labels, 0.5)
    np.testing.assert_array_equal(sel.indices, again.indices)
    other = random_subset(jax.random.key(1), labels, 0.5)
    assert not np.array_equal(sel.indices, other.indices)
    flat = random_subset(jax.random.key(0), labels, 0.25, per_class=False)
    assert len(flat) == 50 and len(np.unique(flat.indices)) == 50


def test_random_subset_keeps_about_half_of_any_fixed_set():
    # A random half keeps ~50% of the poisons, whatever they are (the earlier study's
    # "random", drawn with the poisoning seed, kept 99.5%).
    labels = np.zeros(2000, np.int32)
    poisons = np.zeros(2000, bool)
    poisons[::20] = True
    kept = [
        poisons[random_subset(jax.random.key(s), labels, 0.5).indices].sum() / poisons.sum()
        for s in range(20)
    ]
    assert abs(np.mean(kept) - 0.5) < 0.05
