"""CRAIG: gradient proxies, per-class budgets and weights, agreement with per-class runs."""

import jax
import numpy as np
import pytest

from jaxbd.select.base import class_budgets, num_to_select
from jaxbd.select.craig import OuterProduct, craig, gradient_proxy
from jaxbd.select.facility_location import greedy_facility_location

FAST = {"lazy_batch": 4}  # the settings of test_facility_location: shared compilations


def model_outputs(seed, n=150, num_classes=3, width=4):
    rng = np.random.default_rng(seed)
    logits = (2 * rng.normal(size=(n, num_classes))).astype(np.float32)
    # Unequal classes (about 55, 50 and 45 members) so the budgets are not all equal.
    labels = np.repeat(np.arange(num_classes), [55, 50, 45])[rng.permutation(n)]
    features = np.maximum(rng.normal(size=(n, width)), 0).astype(np.float32)
    return logits, labels, features


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_gradient_proxy_kinds():
    logits, labels, features = model_outputs(0)
    errors = softmax(logits.astype(np.float64)) - np.eye(3)[labels]
    np.testing.assert_allclose(gradient_proxy(logits, labels), errors, atol=1e-6)
    np.testing.assert_allclose(gradient_proxy(logits, labels, features), errors, atol=1e-6)
    concat = gradient_proxy(logits, labels, features, kind="concat")
    np.testing.assert_allclose(concat, np.concatenate([errors, features], 1), atol=1e-6)
    outer = gradient_proxy(logits, labels, features, kind="outer")
    assert isinstance(outer, OuterProduct)
    np.testing.assert_allclose(outer.left, errors, atol=1e-6)
    np.testing.assert_array_equal(outer.right, features)


@pytest.mark.parametrize("greedy", ["exact", "lazy"])
def test_per_class_budgets_weights_and_agreement(greedy):
    logits, labels, _ = model_outputs(1)
    proxy = gradient_proxy(logits, labels)
    fraction = 0.3
    selection = craig(proxy, labels, fraction, greedy=greedy, **FAST)
    budgets = class_budgets(labels, num_to_select(labels.size, fraction), 3)
    kept = labels[selection.indices]
    np.testing.assert_array_equal(np.bincount(kept, minlength=3), budgets)
    sizes = np.bincount(labels, minlength=3)
    np.testing.assert_array_equal(np.bincount(kept, selection.weights, minlength=3), sizes)
    assert np.all(np.diff(selection.indices) > 0)
    # Class c's picks are those of facility location on class c alone, mapped back.
    for c in range(3):
        members = np.flatnonzero(labels == c)
        alone = greedy_facility_location(proxy[members], int(budgets[c]), greedy=greedy, **FAST)
        expected = members[alone.order]
        ours = selection.indices[kept == c]
        np.testing.assert_array_equal(ours, np.sort(expected))
        np.testing.assert_array_equal(
            selection.weights[kept == c], alone.weights[np.argsort(expected)]
        )


def test_lazy_equals_exact_with_duplicated_examples():
    logits, labels, _ = model_outputs(2)
    logits[10:40] = logits[0]  # duplicates (and exact ties) inside whatever classes they hit
    proxy = gradient_proxy(logits, labels)
    exact = craig(proxy, labels, 0.5, greedy="exact", **FAST)
    lazy = craig(proxy, labels, 0.5, greedy="lazy", **FAST)
    np.testing.assert_array_equal(lazy.indices, exact.indices)
    np.testing.assert_array_equal(lazy.weights, exact.weights)


def test_stochastic_folds_the_class_into_the_key():
    logits, labels, _ = model_outputs(3)
    proxy = gradient_proxy(logits, labels)
    key = jax.random.key(7)
    selection = craig(proxy, labels, 0.3, greedy="stochastic", key=key, **FAST)
    budgets = class_budgets(labels, num_to_select(labels.size, 0.3), 3)
    for c in range(3):
        members = np.flatnonzero(labels == c)
        alone = greedy_facility_location(
            proxy[members],
            int(budgets[c]),
            greedy="stochastic",
            key=jax.random.fold_in(key, c),
            **FAST,
        )
        np.testing.assert_array_equal(
            selection.indices[labels[selection.indices] == c], np.sort(members[alone.order])
        )
    with pytest.raises(ValueError, match="PRNG key"):
        craig(proxy, labels, 0.3, greedy="stochastic")


def test_outer_proxy_equals_materialized_outer_product():
    logits, labels, features = model_outputs(4)
    outer = gradient_proxy(logits, labels, features, kind="outer")
    dense = np.einsum("ic,if->icf", np.asarray(outer.left), features).reshape(labels.size, -1)
    implicit = craig(outer, labels, 0.4, greedy="lazy", **FAST)
    explicit = craig(dense, labels, 0.4, greedy="lazy", **FAST)
    np.testing.assert_array_equal(implicit.indices, explicit.indices)
    np.testing.assert_array_equal(implicit.weights, explicit.weights)


def test_classes_with_budget_zero_are_skipped():
    logits, labels, _ = model_outputs(5)
    labels = labels.copy()
    labels[:2] = 3  # a class of two: its budget at 10% is 0 by largest remainder
    budgets = class_budgets(labels, num_to_select(labels.size, 0.1), 4)
    assert budgets[3] == 0
    selection = craig(gradient_proxy(logits, labels % 3), labels, 0.1, **FAST)
    assert not np.any(labels[selection.indices] == 3)
    np.testing.assert_array_equal(np.bincount(labels[selection.indices], minlength=4), budgets)


def test_errors():
    logits, labels, features = model_outputs(6)
    with pytest.raises(ValueError, match="kind must be one of"):
        gradient_proxy(logits, labels, features, kind="inner")
    with pytest.raises(ValueError, match="needs the penultimate features"):
        gradient_proxy(logits, labels, kind="outer")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        gradient_proxy(logits, labels + 1)
    with pytest.raises(ValueError, match=r"features must have shape \[150, F\]"):
        gradient_proxy(logits, labels, features[:-1], kind="concat")
    proxy = gradient_proxy(logits, labels)
    with pytest.raises(ValueError, match="149 gradient proxies for 150 labels"):
        craig(proxy[:-1], labels, 0.5)
    with pytest.raises(ValueError, match="fraction"):
        craig(proxy, labels, 0.0)
    with pytest.raises(ValueError, match="greedy must be one of"):
        craig(proxy, labels, 0.5, greedy="naive")


def test_weights_are_raw_cluster_sizes_or_normalized_to_mean_one():
    logits, labels, _ = model_outputs(7)
    proxy = gradient_proxy(logits, labels)
    raw = craig(proxy, labels, 0.3, greedy="lazy", **FAST)
    # Raw: integer cluster sizes ≥ 1 summing to N (every class has a budget here).
    assert np.all(raw.weights >= 1) and np.all(raw.weights == np.round(raw.weights))
    assert raw.weights.sum() == labels.size
    # Raw cluster sizes, by brute force: each example counts for its class's nearest medoid.
    proxy64 = np.asarray(proxy, np.float64)
    for c in range(3):
        members = np.flatnonzero(labels == c)
        medoids = raw.indices[labels[raw.indices] == c]
        distances = np.linalg.norm(proxy64[members, None] - proxy64[None, medoids], axis=-1)
        sizes = np.bincount(np.argmin(distances, axis=1), minlength=len(medoids))
        np.testing.assert_array_equal(raw.weights[labels[raw.indices] == c], sizes)
    normalized = craig(proxy, labels, 0.3, greedy="lazy", normalize=True, **FAST)
    np.testing.assert_array_equal(normalized.indices, raw.indices)
    assert normalized.weights.dtype == np.float32
    np.testing.assert_allclose(normalized.weights.sum(), len(normalized), rtol=1e-6)
    np.testing.assert_allclose(normalized.weights, raw.weights * len(raw) / labels.size, rtol=1e-6)
    with pytest.raises(ValueError, match="normalize must be a bool"):
        craig(proxy, labels, 0.3, normalize="yes")


def test_float_labels_are_a_clear_error():
    logits, labels, _ = model_outputs(8)
    proxy = gradient_proxy(logits, labels)
    with pytest.raises(ValueError, match=r"labels must be integers .* float"):
        craig(proxy, labels.astype(np.float32), 0.5)


def test_gradient_proxy_is_a_host_function_not_jittable():
    logits, labels, _ = model_outputs(9)
    host_only = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError)
    with pytest.raises(host_only):
        jax.jit(gradient_proxy)(logits, labels)
