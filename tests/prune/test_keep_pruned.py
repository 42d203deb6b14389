"""`prune.keep_pruned`: exact zeros through a user's own optax optimizer, no retrace per mask."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbd import prune


def toy_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
        "dense": {
            "kernel": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
        },
    }


def loss_fn(params, x):
    h = jnp.tanh(jnp.einsum("bhwc,hwcd->bd", x, params["conv"]["kernel"]))
    out = h @ params["dense"]["kernel"] + params["dense"]["bias"]
    return jnp.mean(out**2) - jnp.mean(out)


def make_tx(mask):
    return optax.chain(
        optax.add_decayed_weights(5e-4),
        optax.sgd(0.1, momentum=0.9),
        prune.keep_pruned(mask),
    )


def pruned_coordinates(mask):
    return jax.tree.map(lambda m: ~np.asarray(m), mask)


def test_ten_steps_of_sgd_with_momentum_and_weight_decay_keep_exact_zeros():
    params = toy_params()
    # Pruned weights start nonzero: the transform must zero them, not only keep zeros.
    mask = prune.magnitude_masks(params, 0.5)
    tx = make_tx(mask)
    opt_state = tx.init(params)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3, 3, 2)), jnp.float32)
    # The unmasked optimizer, for contrast: its pruned weights do move.
    plain_tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
    plain = prune.apply_mask(params, mask)
    plain_state = plain_tx.init(plain)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(loss_fn)(params, x)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for _ in range(10):
        params, opt_state = step(params, opt_state)
        grads = jax.grad(loss_fn)(plain, x)
        updates, plain_state = plain_tx.update(grads, plain_state, plain)
        plain = optax.apply_updates(plain, updates)
    for p, q, pruned in zip(
        jax.tree.leaves(params),
        jax.tree.leaves(plain),
        jax.tree.leaves(pruned_coordinates(mask)),
        strict=True,
    ):
        p, q = np.asarray(p), np.asarray(q)
        assert np.all(p[pruned] == 0.0)  # exactly zero, not small
        assert np.all(p[~pruned] != 0.0)  # the kept weights trained
        if pruned.any():
            assert np.any(q[pruned] != 0.0)  # without the transform they would not stay 0


def test_a_new_mask_is_new_state_not_a_new_trace():
    params = toy_params()
    x = jnp.ones((4, 3, 3, 2), jnp.float32)
    mask_a = prune.magnitude_masks(params, 0.3)
    mask_b = prune.magnitude_masks(params, 0.6)
    tx = make_tx(mask_a)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, opt_state):
        grads = jax.grad(loss_fn)(params, x)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # The second mask reaches the step compiled for the first as data: a chain built with it
    # (only its state is used), or the mask swapped into
    # an existing state (keeping the momentum).
    results = {}
    for name, state in (
        ("a", tx.init(params)),
        ("b", make_tx(mask_b).init(params)),
        ("b_swapped", prune.replace_mask(tx.init(params), mask_b)),
    ):
        p, s = params, state
        for _ in range(3):
            p, s = step(p, s)
        results[name] = p
    for name, mask in (("a", mask_a), ("b", mask_b), ("b_swapped", mask_b)):
        for p, pruned in zip(
            jax.tree.leaves(results[name]),
            jax.tree.leaves(pruned_coordinates(mask)),
            strict=True,
        ):
            assert np.all(np.asarray(p)[pruned] == 0.0), name
    chex.clear_trace_counter()


def test_checks_the_mask_and_needs_params():
    params = toy_params()
    bad = {"conv": {"kernel": jnp.ones((3, 3, 2, 4), bool)}}
    with pytest.raises(ValueError, match="structure"):
        prune.keep_pruned(bad).init(params)
    tx = prune.keep_pruned(prune.full_mask(params))
    state = tx.init(params)
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="no keep_pruned state"):
        prune.replace_mask(optax.sgd(0.1).init(params), prune.full_mask(params))


def test_magnitude_masks_is_a_host_function_not_jittable():
    # Masks are computed between phases and passed to keep_pruned as data; not under jit.
    params = toy_params()
    host_only = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError)
    with pytest.raises(host_only):
        jax.jit(lambda p: prune.magnitude_masks(p, 0.3))(params)
