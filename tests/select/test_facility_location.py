"""Greedy facility location against brute force on tiny blocks.

Blocks have 40-64 rows (padded to 64) and 3-d proxies, so the few jitted programs compile
once and are reused across tests.
"""

import jax
import numpy as np
import pytest

from jaxbd.select.facility_location import (
    OuterProduct,
    facility_location,
    facility_location_groups,
    facility_location_objective,
    greedy_facility_location,
    similarity_matrix,
)

# Small re-evaluation batches make lazy greedy actually lazy on 64 candidates; every call
# passes it so that exact and lazy runs share compiled programs.
FAST = {"lazy_batch": 4}
STREAM = {"max_matrix_bytes": 0, **FAST}  # forces the streamed (recompute-rows) path


def brute_similarity(g):
    """s_ij = d_max − ‖g_i − g_j‖ in float64, from materialized proxies g [n, d]."""
    g = np.asarray(g, np.float64)
    d = np.sqrt(np.sum((g[:, None, :] - g[None, :, :]) ** 2, axis=-1))
    return d.max() - d


def reference_greedy(sim, budget):
    """Plain numpy exact greedy on S[j, i] = s_ij: picks, gains and cluster sizes."""
    sim = np.asarray(sim, np.float64)
    cur = np.zeros(sim.shape[0])
    picks, gains = [], []
    for _ in range(budget):
        gain = np.maximum(sim - cur[None, :], 0.0).sum(axis=1)
        gain[picks] = -np.inf
        j = int(np.argmax(gain))  # first maximum: ties to the lowest index
        picks.append(j)
        gains.append(gain[j])
        cur = np.maximum(cur, sim[j])
    # Each example goes to the earliest pick among those of maximal similarity.
    owner = np.argmax(sim[picks], axis=0)
    weights = np.bincount(owner, minlength=budget).astype(np.float64)
    return np.array(picks), np.array(gains), weights


def random_points(seed, n=56, d=3, duplicates=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    if duplicates:
        # Copy some rows onto others: exact ties in similarities and gains.
        src = rng.choice(n, duplicates, replace=False)
        dst = rng.choice(np.setdiff1d(np.arange(n), src), duplicates, replace=False)
        x[dst] = x[src]
    return x


def test_similarity_matrix_matches_brute_force():
    x = random_points(0)
    sim = np.asarray(similarity_matrix(x))
    np.testing.assert_allclose(sim, brute_similarity(x), atol=2e-5)
    assert np.all(np.diag(sim) == sim.max())  # d_ii = 0 exactly


def test_outer_product_kernel_identity_matches_materialized():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(48, 4)).astype(np.float32)
    h = np.maximum(rng.normal(size=(48, 5)), 0).astype(np.float32)
    materialized = np.einsum("ip,iq->ipq", a, h).reshape(48, -1)
    sim = np.asarray(similarity_matrix(OuterProduct(a, h)))
    np.testing.assert_allclose(sim, brute_similarity(materialized), atol=5e-5)
    np.testing.assert_allclose(sim, np.asarray(similarity_matrix(materialized)), atol=5e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_greedy_equals_numpy_step_by_step(seed):
    x = random_points(seed, duplicates=4 * seed)
    picks, gains, weights = reference_greedy(similarity_matrix(x), 14)
    result = greedy_facility_location(x, 14, greedy="exact", **FAST)
    np.testing.assert_array_equal(result.order, picks)
    np.testing.assert_allclose(result.gains, gains, rtol=1e-5)
    np.testing.assert_array_equal(result.weights, weights)
    assert result.weights.sum() == x.shape[0]


@pytest.mark.parametrize(
    "points",
    [
        random_points(2),
        random_points(3, duplicates=12),
        # Integer grid with repeats: many exactly equal similarities and gains.
        np.random.default_rng(4).integers(0, 3, size=(60, 3)).astype(np.float32),
        random_points(5, n=41, duplicates=20),
    ],
)
@pytest.mark.parametrize("path", [FAST, STREAM], ids=["materialized", "streamed"])
def test_lazy_is_identical_to_exact(points, path):
    budget = points.shape[0] // 2
    exact = greedy_facility_location(points, budget, greedy="exact", **path)
    lazy = greedy_facility_location(points, budget, greedy="lazy", **path)
    np.testing.assert_array_equal(lazy.order, exact.order)
    np.testing.assert_array_equal(lazy.gains, exact.gains)
    np.testing.assert_array_equal(lazy.weights, exact.weights)


def test_streamed_equals_materialized():
    x = random_points(6)
    for greedy in ("exact", "lazy"):
        materialized = greedy_facility_location(x, 20, greedy=greedy, **FAST)
        streamed = greedy_facility_location(x, 20, greedy=greedy, **STREAM)
        np.testing.assert_array_equal(streamed.order, materialized.order)
        np.testing.assert_allclose(streamed.gains, materialized.gains, rtol=1e-5)
        np.testing.assert_array_equal(streamed.weights, materialized.weights)


def test_ties_and_weights_with_duplicates():
    # Three groups of identical points: the first three picks are one per group, each
    # weighted by its group size; later picks are copies of picks and gain nothing.
    corners = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]], np.float32)
    x = np.repeat(corners, [20, 12, 16], axis=0)
    result = greedy_facility_location(x, 5, greedy="lazy", **FAST)
    assert sorted(result.order[:3].tolist()) == [0, 20, 32]  # lowest index of each group
    np.testing.assert_array_equal(np.sort(result.weights[:3]), [12, 16, 20])
    np.testing.assert_array_equal(result.order[3:], [1, 2])  # gains 0: lowest free index
    np.testing.assert_array_equal(result.gains[3:], [0, 0])
    np.testing.assert_array_equal(result.weights[3:], [0, 0])  # ties go to the earlier pick
    exact = greedy_facility_location(x, 5, greedy="exact", **FAST)
    np.testing.assert_array_equal(exact.order, result.order)


def test_selection_is_canonical_and_weights_sum_to_n():
    x = random_points(7)
    selection = facility_location(x, 10, greedy="lazy", **FAST)
    result = greedy_facility_location(x, 10, greedy="lazy", **FAST)
    np.testing.assert_array_equal(selection.indices, np.sort(result.order))
    assert selection.indices.dtype == np.int32 and selection.weights.dtype == np.float32
    np.testing.assert_array_equal(selection.weights, result.weights[np.argsort(result.order)])
    assert selection.weights.sum() == x.shape[0]


@pytest.mark.parametrize("seed", [8, 9, 10])
def test_stochastic_reaches_the_guarantee(seed):
    x = random_points(seed, n=60)
    budget, epsilon = 20, 0.1
    exact = facility_location_objective(x, greedy_facility_location(x, budget, **FAST).order)
    key = jax.random.key(seed)
    result = greedy_facility_location(
        x, budget, greedy="stochastic", key=key, epsilon=epsilon, **FAST
    )
    value = facility_location_objective(x, result.order)
    assert value >= (1 - 1 / np.e - epsilon) * exact
    assert len(set(result.order.tolist())) == budget and result.weights.sum() == 60
    np.testing.assert_allclose(result.gains.sum(), value, rtol=1e-5)
    again = greedy_facility_location(
        x, budget, greedy="stochastic", key=key, epsilon=epsilon, **FAST
    )
    np.testing.assert_array_equal(again.order, result.order)  # deterministic given the key


def test_objective_matches_brute_force_and_gains():
    x = random_points(11)
    result = greedy_facility_location(x, 9, **FAST)
    brute = brute_similarity(x)[result.order].max(axis=0).sum()
    value = facility_location_objective(x, result.order)
    np.testing.assert_allclose(value, brute, rtol=1e-5)
    np.testing.assert_allclose(result.gains.sum(), value, rtol=1e-5)
    assert facility_location_objective(x, []) == 0.0


def test_groups_batched_equal_separate_runs():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(180, 3)).astype(np.float32)
    groups = [np.arange(0, 34), np.arange(34, 84), np.arange(84, 134), np.arange(134, 180)]
    budgets = [34, 0, 40, 7]
    # Room for two 64×64 matrices per call: blocks 0 and 2 share a call, block 3 is padded
    # with an empty block. Block 0 takes every candidate and is done while block 2 still
    # runs: its lazy re-evaluation loop must stop, and block 2 must be unaffected.
    # (blocks_per_call: the CPU default is one block per call.)
    settings = dict(max_matrix_bytes=2 * 64 * 64 * 4, blocks_per_call=4, **FAST)
    batched = facility_location_groups(x, groups, budgets, greedy="lazy", **settings)
    exact = facility_location_groups(x, groups, budgets, greedy="exact", **settings)
    assert batched[1].order.size == 0
    for group, budget, result, reference in zip(groups, budgets, batched, exact, strict=True):
        np.testing.assert_array_equal(result.order, reference.order)
        np.testing.assert_array_equal(result.gains, reference.gains)
        np.testing.assert_array_equal(result.weights, reference.weights)
        if budget == 0:
            continue
        # A block alone computes its distances in a batch of one: the same subset, up to
        # the order of picks whose gains differ by rounding only.
        alone = greedy_facility_location(x[group], budget, greedy="exact", **FAST)
        np.testing.assert_array_equal(np.sort(result.order), np.sort(group[alone.order]))
        np.testing.assert_array_equal(
            result.weights[np.argsort(result.order)], alone.weights[np.argsort(alone.order)]
        )
        np.testing.assert_allclose(result.gains.sum(), alone.gains.sum(), rtol=1e-6)


def test_errors():
    x = random_points(0)
    with pytest.raises(ValueError, match=r"budget must be an int in \[1, n=56\]"):
        facility_location(x, 0)
    with pytest.raises(ValueError, match="budget"):
        facility_location(x, 57)
    with pytest.raises(ValueError, match="greedy must be one of"):
        facility_location(x, 3, greedy="fast")
    with pytest.raises(ValueError, match="PRNG key"):
        facility_location(x, 3, greedy="stochastic")
    for epsilon in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"epsilon must be in \(0, 1\)"):
            facility_location(x, 3, greedy="stochastic", key=jax.random.key(0), epsilon=epsilon)
    with pytest.raises(ValueError, match="rank 2"):
        facility_location(x[:, 0], 3)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        facility_location(bad, 3)
    with pytest.raises(ValueError, match="disagree on n"):
        facility_location(OuterProduct(x, x[:-1]), 3)
    with pytest.raises(ValueError, match="power of two"):
        facility_location(x, 3, block_size=100)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 56\)"):
        facility_location_objective(x, [0, 56])
    with pytest.raises(ValueError, match="distinct"):
        facility_location_groups(x, [np.array([1, 1])], [1])
    for bad_count in (0, 1.5, True):
        with pytest.raises(ValueError, match="blocks_per_call"):
            facility_location_groups(x, [np.arange(4)], [1], blocks_per_call=bad_count)
