"""Update-masked steps: one train step with an update mask, in both modes.

The alternating (clean / poisoned) epochs built from these steps are tested with the attack
that runs them, in tests/attacks/test_pcb_training.py.

A tiny CNN on 8×8 images keeps every compile under a second; each jitted function is built
once per module and reused.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbd.attacks import badnets
from jaxbd.data import augment as augment_lib
from jaxbd.train import (
    CosineSchedule,
    create_train_state,
    init_variables,
    make_train_step,
    sgd_direction,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
LR, MOMENTUM, WD = 0.1, 0.9, 5e-4
B = 8


class TinyNet(nn.Module):
    """Conv + BatchNorm + pooled dense head; returns (logits, features) like jaxbd models."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        features = jnp.mean(nn.relu(x), axis=(1, 2))
        return nn.Dense(self.num_classes)(features), features


MODEL = TinyNet()
TX = sgd_direction(MOMENTUM, WD)


@functools.cache
def _variables():
    return init_variables(MODEL, jax.random.key(0), (8, 8, 3))


def _state(mask=None):
    # Fresh copies: steps donate their state, which must not delete the cached variables.
    params, batch_stats = jax.tree.map(jnp.copy, _variables())
    schedule = CosineSchedule.create(LR, 1000)  # ~constant lr over a few steps
    return create_train_state(params, batch_stats, TX, schedule, jax.random.key(1), mask)


def _batch(seed=0, n=B):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.integers(0, 256, (n, 8, 8, 3)), jnp.uint8)
    return images, jnp.asarray(rng.integers(0, 10, n), jnp.int32), jnp.ones(n, jnp.float32)


def _random_mask(seed, fraction):
    params = _variables()[0]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < fraction, jnp.float32), params)


def _momentum(state):
    return state.opt_state[1].trace  # chain(add_decayed_weights, trace)


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope="module")
def steps():
    """Jitted steps without augmentation, so a hand-written SGD step can be compared."""
    kw = dict(mean=MEAN, std=STD, crop_padding=0, flip=False)
    return {
        mode: jax.jit(make_train_step(MODEL, TX, update_mask_mode=mode, **kw))
        for mode in ("freeze", "gradient")
    }


@jax.jit
def _reference_step(state, images, labels, weights):
    """PyTorch SGD (momentum, L2 weight decay) with the pruning mask, written out by hand."""
    x = augment_lib.normalize(images, MEAN, STD)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        (logits, _), _ = MODEL.apply(variables, x, train=True, mutable=["batch_stats"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return jnp.mean(weights * ce)

    grads = jax.grad(loss_fn)(state.params)
    lr = state.schedule(state.step)
    buf = jax.tree.map(
        lambda b, g, m, p: MOMENTUM * b + g * m + WD * p,
        _momentum(state),
        grads,
        state.mask,
        state.params,
    )
    params = jax.tree.map(lambda p, b, m: (p - lr * b) * m, state.params, buf, state.mask)
    return params, buf


def test_default_step_is_masked_sgd(steps):
    # No update mask: the step is the engine's usual one (pruning mask, momentum, decay).
    state = _state(mask=_random_mask(1, 0.7))
    for seed in range(2):  # the second step also checks the momentum carried over
        batch = _batch(seed)
        expected_params, expected_buf = _reference_step(state, *batch)
        state, _ = steps["freeze"](state, *batch)
        chex.assert_trees_all_close(state.params, expected_params, rtol=1e-5, atol=1e-7)
        chex.assert_trees_all_close(_momentum(state), expected_buf, rtol=1e-5, atol=1e-7)


def test_all_ones_update_mask_is_the_default_step(steps):
    ones = jax.tree.map(jnp.ones_like, _variables()[0])
    batch = _batch(0)
    plain, _ = steps["freeze"](_state(), *batch)
    for mode, step in steps.items():
        masked, _ = step(_state(), *batch, ones)
        # Equal up to XLA fusing the extra multiply by 1 differently (observed: 1 ulp).
        chex.assert_trees_all_close(
            (masked.params, masked.batch_stats, masked.opt_state),
            (plain.params, plain.batch_stats, plain.opt_state),
            rtol=1e-6,
            atol=1e-9,
            custom_message=mode,
        )


def test_freeze_keeps_excluded_parameters_and_momentum_bit_identical(steps):
    pruning = _random_mask(2, 0.7)
    update = _random_mask(3, 0.3)
    state, _ = steps["freeze"](_state(mask=pruning), *_batch(0))  # momentum is now nonzero
    before_params, before_buf = _host(state.params), _host(_momentum(state))
    state, out = steps["freeze"](state, *_batch(1), update)
    after_params, after_buf = _host(state.params), _host(_momentum(state))
    assert np.isfinite(float(out.loss))
    for p0, p1, b0, b1, m, u in zip(
        *map(jax.tree.leaves, (before_params, after_params, before_buf, after_buf)),
        *map(jax.tree.leaves, (_host(pruning), _host(update))),
        strict=True,
    ):
        frozen, trained = u == 0, (u == 1) & (m == 1)
        np.testing.assert_array_equal(p1[frozen], p0[frozen])  # not even momentum or decay
        np.testing.assert_array_equal(b1[frozen], b0[frozen])  # the buffer is paused
        assert np.all(p1[m == 0] == 0)  # pruning still holds
        if trained.sum() > 3:
            assert np.mean(p1[trained] != p0[trained]) > 0.9  # the selected ones train


def test_gradient_mode_masks_only_the_loss_gradient(steps):
    # The reference behaviour: excluded coordinates get no loss gradient, but momentum and
    # weight decay still move them: b ← μb + λθ, θ ← θ − lr·b. Selected coordinates are
    # updated exactly as in "freeze" mode.
    update = _random_mask(4, 0.3)
    state0, _ = steps["freeze"](_state(), *_batch(0))
    before_params, before_buf = _host(state0.params), _host(_momentum(state0))
    lr = float(state0.schedule(state0.step))
    batch = _batch(1)
    frozen_state, _ = steps["freeze"](jax.tree.map(jnp.copy, state0), *batch, update)
    loose_state, _ = steps["gradient"](state0, *batch, update)
    for p0, b0, pf, pg, bg, u in zip(
        *map(jax.tree.leaves, (before_params, before_buf)),
        *map(jax.tree.leaves, _host((frozen_state.params, loose_state.params))),
        jax.tree.leaves(_host(_momentum(loose_state))),
        jax.tree.leaves(_host(update)),
        strict=True,
    ):
        out = u == 0
        expected_buf = MOMENTUM * b0[out] + WD * p0[out]
        np.testing.assert_allclose(bg[out], expected_buf, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(pg[out], p0[out] - lr * expected_buf, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(pg[~out], pf[~out], rtol=1e-6, atol=1e-9)


def test_new_update_mask_values_do_not_retrace():
    step = jax.jit(
        chex.assert_max_traces(make_train_step(MODEL, TX, mean=MEAN, std=STD), n=1),
        donate_argnums=0,
    )
    state = _state()
    for seed, fraction in ((5, 0.1), (6, 0.5), (7, 0.0), (8, 1.0)):
        state, _ = step(state, *_batch(seed), _random_mask(seed, fraction))


def test_after_augment_transforms_the_augmented_batch():
    # A step with augmentation and an after-augment trigger equals a step without
    # augmentation on the batch augmented with the step's key and then triggered: the patch
    # lands where the test images have it, whatever the crop and flip.
    trigger = badnets(size=3, target=2)
    aug = dict(mean=MEAN, std=STD, crop_padding=2, flip=True)
    with_hook = jax.jit(make_train_step(MODEL, TX, after_augment=trigger.train_fn, **aug))
    plain = jax.jit(make_train_step(MODEL, TX, mean=MEAN, std=STD, crop_padding=0, flip=False))
    state = _state()
    images, labels, weights = _batch(3)
    key = jax.random.fold_in(state.rng, state.step)
    augmented = augment_lib.augment(key, images, crop_padding=2, flip=True)
    stamped, target = trigger.train_fn(jax.random.fold_in(key, 1), augmented, labels)
    assert np.all(np.asarray(stamped)[:, -3:, -3:] == (255, 0, 0)) and np.all(target == 2)
    expected, expected_out = plain(_state(), stamped, target, weights)
    got, out = with_hook(state, images, labels, weights)
    chex.assert_trees_all_close(got.params, expected.params, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(out.correct, expected_out.correct)


def test_unknown_update_mask_mode_is_rejected():
    with pytest.raises(ValueError, match="update_mask_mode"):
        make_train_step(MODEL, TX, mean=MEAN, std=STD, update_mask_mode="soft")
