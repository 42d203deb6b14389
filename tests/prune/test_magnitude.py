"""Masks and magnitude pruning against hand-computed and brute-force references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd import prune


def toy_params(seed=0):
    """A parameter tree like a small conv net's: kernels (prunable), biases and BN (not)."""
    rng = np.random.default_rng(seed)
    return {
        "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
        "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
        },
    }


def brute_force_layerwise(w, keep_mask, rate):
    """Plain-Python reference: rank survivors by (|w|, flat index), drop the first q."""
    flat_w, flat_m = np.abs(np.asarray(w).ravel()), np.asarray(keep_mask).ravel()
    alive = [i for i in range(flat_w.size) if flat_m[i]]
    q = int(np.floor(rate * len(alive) + 0.5))
    order = sorted(alive, key=lambda i: (flat_w[i], i))
    new = flat_m.copy()
    for i in order[:q]:
        new[i] = False
    return new.reshape(np.shape(w))


def test_full_mask_structure_and_non_prunable_leaves_stay_true():
    params = toy_params()
    mask = prune.magnitude_masks(params, 0.5)
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    for m, p in zip(jax.tree.leaves(mask), jax.tree.leaves(params), strict=True):
        assert m.shape == p.shape and m.dtype == jnp.bool_
    assert bool(np.all(mask["bn"]["scale"])) and bool(np.all(mask["dense"]["bias"]))
    assert int(np.sum(mask["conv"]["kernel"])) == 72 - 36
    assert int(np.sum(mask["dense"]["kernel"])) == 20 - 10


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.77])
def test_layerwise_matches_brute_force_over_rounds(rate):
    params = toy_params(1)
    mask = None
    reference = {k: np.ones(np.shape(params[k]["kernel"]), bool) for k in ("conv", "dense")}
    for _ in range(3):
        mask = prune.magnitude_masks(params, rate, mask=mask)
        for k in reference:
            reference[k] = brute_force_layerwise(params[k]["kernel"], reference[k], rate)
            np.testing.assert_array_equal(np.asarray(mask[k]["kernel"]), reference[k])


def test_exact_count_under_ties():
    # Every magnitude equal: the count is still exact, lower indices pruned first.
    params = {"kernel": jnp.ones((4, 5)), "bias": jnp.zeros(5)}
    mask = prune.magnitude_masks(params, 0.3)
    flat = np.asarray(mask["kernel"]).ravel()
    assert flat.sum() == 20 - 6
    np.testing.assert_array_equal(flat, np.arange(20) >= 6)
    # Ties between zero survivors and already pruned weights: pruned ones never count.
    params = {"kernel": jnp.zeros((10, 2))}
    m1 = prune.magnitude_masks(params, 0.5)
    m2 = prune.magnitude_masks(params, 0.5, mask=m1)
    assert int(np.sum(m2["kernel"])) == 5
    assert not np.any(np.asarray(m2["kernel"]) & ~np.asarray(m1["kernel"]))


def test_three_layerwise_rounds_compound_with_defined_rounding():
    # survivors: s_{r+1} = s_r - floor(0.3 s_r + 0.5); for n = 1000: 1000, 700, 490, 343.
    assert prune.survivor_counts(1000, 0.3, 3) == [1000, 700, 490, 343]
    # n = 72 (a 3×3×2×4 kernel): 72 - 22 = 50, 50 - 15 = 35, 35 - 11 = 24 (0.343·72 = 24.7).
    assert prune.survivor_counts(72, 0.3, 3) == [72, 50, 35, 24]
    rng = np.random.default_rng(3)
    params = {
        "a": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 7, 11)))},
        "b": {"kernel": jnp.asarray(rng.normal(size=(13, 17)))},
    }
    mask = None
    for _ in range(3):
        mask = prune.magnitude_masks(params, 0.3, scope="layerwise", mask=mask)
    for leaf in ("a", "b"):
        n = params[leaf]["kernel"].size
        kept = int(np.sum(mask[leaf]["kernel"]))
        assert kept == prune.survivor_counts(n, 0.3, 3)[-1]
        assert abs(kept - n * 0.7**3) <= 2


def test_global_keeps_exact_count_and_one_threshold():
    params = toy_params(2)
    mask = prune.magnitude_masks(params, 0.4, scope="global")
    kernels = np.concatenate(
        [np.abs(np.asarray(params[k]["kernel"])).ravel() for k in ("conv", "dense")]
    )
    kept = np.concatenate([np.asarray(mask[k]["kernel"]).ravel() for k in ("conv", "dense")])
    assert kept.sum() == 92 - prune.num_to_prune(92, 0.4)
    # One threshold: every kept magnitude ≥ every pruned magnitude.
    assert kernels[kept].min() >= kernels[~kept].max()
    # A second global round prunes 40% of the survivors.
    mask2 = prune.magnitude_masks(params, 0.4, scope="global", mask=mask)
    total = sum(int(np.sum(mask2[k]["kernel"])) for k in ("conv", "dense"))
    assert total == prune.survivor_counts(92, 0.4, 2)[-1]


def test_sparsity_summary():
    params = toy_params()
    mask = prune.magnitude_masks(params, 0.5)
    summary = prune.sparsity(mask)
    assert summary["prunable"] == 92 and summary["pruned"] == 46
    assert summary["total"] == pytest.approx(0.5)
    assert summary["layers"] == {"conv/kernel": 0.5, "dense/kernel": 0.5}
    assert prune.sparsity(prune.full_mask(params))["total"] == 0.0


def test_apply_mask_zeroes_exactly_the_pruned_weights():
    params = toy_params()
    mask = prune.magnitude_masks(params, 0.3)
    masked = prune.apply_mask(params, mask)
    for p, m, q in zip(
        jax.tree.leaves(params), jax.tree.leaves(mask), jax.tree.leaves(masked), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(q), np.where(np.asarray(m), p, 0.0))


def test_random_mask_matches_counts():
    params = toy_params()
    reference = prune.magnitude_masks(params, 0.6)
    layerwise = prune.random_masks(jax.random.key(0), reference)
    assert prune.survivors(layerwise) == prune.survivors(reference)
    assert not np.array_equal(
        np.asarray(layerwise["conv"]["kernel"]), np.asarray(reference["conv"]["kernel"])
    )
    glob = prune.random_masks(jax.random.key(1), reference, scope="global")
    assert sum(prune.survivors(glob).values()) == sum(prune.survivors(reference).values())
    assert bool(np.all(glob["dense"]["bias"]))


def test_errors():
    params = toy_params()
    with pytest.raises(ValueError, match="rate must be in"):
        prune.magnitude_masks(params, 1.5)
    with pytest.raises(ValueError, match="scope must be one of"):
        prune.magnitude_masks(params, 0.3, scope="per_channel")
    bad = prune.full_mask(params)
    bad["conv"]["kernel"] = jnp.ones((3, 3), bool)
    with pytest.raises(ValueError, match=r"mask leaf conv/kernel has shape \(3, 3\)"):
        prune.magnitude_masks(params, 0.3, mask=bad)
    with pytest.raises(ValueError, match="mask structure"):
        prune.apply_mask(params, {"conv": bad["conv"]})
