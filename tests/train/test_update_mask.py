"""Update-masked steps and alternating (clean / poisoned) epochs.

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
from jaxbd.attacks.pcb import pcb
from jaxbd.data import augment as augment_lib
from jaxbd.data import make_synthetic
from jaxbd.train import (
    CosineSchedule,
    Trainer,
    alternating_schedule,
    create_train_state,
    dispatch_plan,
    init_variables,
    make_mesh,
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


# -- alternating epochs ----------------------------------------------------------------------


def _trainer(steps_per_call=1, num_devices=1):
    return Trainer(
        MODEL,
        make_mesh(num_devices),
        batch_size=B,
        eval_batch_size=B,
        mean=MEAN,
        std=STD,
        steps_per_call=steps_per_call,
        progress=False,
    )


@pytest.fixture(scope="module")
def setup():
    splits = make_synthetic(num_train=48, num_test=8, image_size=8, seed=0)
    trainer = _trainer()
    clean = trainer.put(splits.train.images, splits.train.labels)
    # A PCB attack on the tiny net: 2 of every 8 examples of a poisoned batch triggered.
    attack = pcb(
        _variables()[0],
        key=jax.random.key(3),
        param_fraction=0.3,
        trigger=badnets(size=2),
        poison_batch_ratio=0.25,
        trigger_stage="before_augment",  # a pool of triggered copies, used as it is
        update_mask_mode="freeze",  # the mode the spy below wraps
    )
    pool_set = attack.poison_source(jax.random.key(4), splits.train, fraction=0.2)
    assert len(pool_set) == 10 and np.all(pool_set.labels == 0)
    pool = trainer.put(pool_set.images, pool_set.labels)
    return trainer, clean, pool, attack


def _fresh(trainer, mask=None):
    params, batch_stats = jax.tree.map(jnp.copy, _variables())
    schedule = CosineSchedule.create(LR, 1000)
    return trainer.new_state(params, batch_stats, schedule, rng=jax.random.key(1), mask=mask)


def test_alternating_schedule():
    np.testing.assert_array_equal(alternating_schedule(5, 2), [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(alternating_schedule(6, 3), [1, 0, 0, 1, 0, 0])
    assert alternating_schedule(4, 1).all()
    with pytest.raises(ValueError, match="poison_every"):
        alternating_schedule(4, 0)


def _spy(trainer, record):
    """Wraps the trainer's compiled clean and poisoned steps to log every call, and checks
    that each poisoned step leaves the parameters outside the update mask unchanged."""
    clean_fn, poison_fn = (
        trainer._train_steps,
        trainer._poison_steps_fn("freeze"),
    )  # no poison transform

    def clean(state, data, idx):
        record.append(("clean", np.asarray(idx)))
        return clean_fn(state, data, idx)

    def poison(state, data, pool, update_mask, fill, idx):
        before = _host(state.params)  # read before the state is donated
        state, out = poison_fn(state, data, pool, update_mask, fill, idx)
        trees = (before, _host(state.params), _host(update_mask))
        for p0, p1, u in zip(*map(jax.tree.leaves, trees), strict=True):
            np.testing.assert_array_equal(p1[u == 0], p0[u == 0])
        record.append(("poison", np.asarray(fill), np.asarray(idx)))
        return state, out

    trainer._train_steps, trainer._poison_steps["freeze", None] = clean, poison
    return clean_fn, poison_fn


def test_alternating_epoch_order_counts_and_batches(setup):
    trainer, clean, pool, _ = setup
    update = _random_mask(9, 0.2)
    subset = jnp.arange(0, 48, 2, dtype=jnp.int32)  # 24 examples: 3 steps
    record = []
    originals = _spy(trainer, record)
    try:
        state, stats = trainer.train_epoch_alternating(
            _fresh(trainer), clean, pool, jax.random.key(0), update_mask=update,
            poison_every=2, poison_batch_size=3,
        )  # fmt: skip
        state, stats = trainer.train_epoch_alternating(
            state, clean, pool, jax.random.key(1), update_mask=update,
            poison_every=3, poison_batch_size=3, indices=subset,
        )  # fmt: skip
    finally:
        trainer._train_steps, trainer._poison_steps["freeze", None] = originals
    kinds = [r[0] for r in record]
    # Epoch 1: 48 examples, 6 steps, P C P C P C; epoch 2: 3 steps, P C C.
    assert kinds == ["poison", "clean"] * 3 + ["poison", "clean", "clean"]
    assert int(state.step) == 9
    assert (stats.clean_steps, stats.poison_steps) == (2, 1)
    assert np.isfinite(stats.clean_loss) and np.isfinite(stats.poison_loss)
    assert 0.0 <= stats.poison_accuracy <= 1.0
    for epoch, calls, allowed in ((0, record[:6], range(48)), (1, record[6:], range(0, 48, 2))):
        seen = []
        for call in calls:
            if call[0] == "clean":
                assert call[1].shape == (1, B)
                seen += list(call[1].ravel())
            else:
                _, fill, idx = call
                assert fill.shape == (1, B - 3) and idx.shape == (1, 3)
                assert set(idx.ravel()) <= set(range(10))
                seen += list(fill.ravel())
        # Every clean example of the epoch at most once, only from the allowed set.
        assert len(seen) == len(set(seen)) and set(seen) <= set(allowed), epoch
    # Epoch 1 draws 3 × 3 = 9 poison examples from a pool of 10: all distinct.
    first = np.concatenate([c[2].ravel() for c in record[:6] if c[0] == "poison"])
    assert len(set(first)) == 9


def test_alternating_epochs_reuse_compiled_functions(setup):
    trainer, clean, pool, attack = setup
    state = _fresh(trainer)
    state, _, _ = trainer.train_epoch(state, clean, jax.random.key(0))
    clean_compiles = trainer._train_steps._cache_size()
    # Epoch 0 through the attack (its mask, 2 triggered examples per batch), then epochs
    # with new masks: the mask is data, not a constant.
    state, stats = attack.train_epoch(trainer, state, clean, pool, jax.random.key(1))
    assert (stats.poison_steps, stats.clean_steps) == (3, 3)
    poison_compiles = trainer._poison_steps["freeze", None]._cache_size()
    for epoch in range(2):
        mask = _random_mask(10 + epoch, 0.3)
        state, _ = trainer.train_epoch_alternating(
            state, clean, pool, jax.random.key(epoch), update_mask=mask, poison_batch_size=2
        )
    # Clean steps are train_epoch's compiled function (one step per call on the CPU).
    assert trainer._train_steps._cache_size() == clean_compiles
    # Poisoned steps: compiled for the attack's epoch (or by an earlier test), then reused.
    assert trainer._poison_steps["freeze", None]._cache_size() == poison_compiles
    state, _, _ = trainer.train_epoch(state, clean, jax.random.key(3))
    assert trainer._train_steps._cache_size() == clean_compiles


def test_poison_transform_gets_the_poison_rows_in_a_step_of_its_own(setup):
    trainer, clean, pool, attack = setup
    traced = []
    trigger = badnets(size=2)

    def transform(key, images, labels):  # records what it is traced with
        traced.append((images.shape, labels.shape))
        return trigger.train_fn(key, images, labels)

    state = _fresh(trainer)
    for epoch in range(2):
        state, stats = trainer.train_epoch_alternating(
            state, clean, pool, jax.random.key(epoch), update_mask=attack.update_mask,
            poison_batch_size=3, poison_transform=transform,
        )  # fmt: skip
        assert stats.poison_steps == 3 and np.isfinite(stats.poison_loss)
    assert traced == [((3, 8, 8, 3), (3,))]  # traced once, on the 3 poison rows
    assert trainer._poison_steps["freeze", transform]._cache_size() == 1


def test_alternating_epoch_keeps_pruned_weights_at_zero(setup):
    trainer, clean, pool, _ = setup
    # On the host: a float32 device mask would become the state's own buffer and be donated.
    pruning = _host(_random_mask(12, 0.6))
    state = _fresh(trainer, mask=pruning)
    # "gradient" mode with wholly poisoned batches (poison_batch_size=None: no clean fill).
    for mode, k in (("freeze", 2), ("gradient", None)):
        state, stats = trainer.train_epoch_alternating(
            state, clean, pool, jax.random.key(0), update_mask=_random_mask(13, 0.5),
            poison_batch_size=k, update_mask_mode=mode,
        )  # fmt: skip
        assert np.isfinite(stats.poison_loss)
        for p, m in zip(*map(jax.tree.leaves, _host((state.params, pruning))), strict=True):
            assert np.all(p[m == 0] == 0), mode


def test_dispatch_plan_uses_one_chunk_shape_per_kind():
    # P C C P C C P: clean runs of 2 scanned in pairs, poisoned steps one per call.
    assert dispatch_plan(alternating_schedule(7, 3), 4) == [
        (True, 1, 1), (False, 2, 1), (True, 1, 1), (False, 2, 1), (True, 1, 1)
    ]  # fmt: skip
    # A short last clean run forces single steps for every clean run (one shape per kind).
    assert dispatch_plan(alternating_schedule(7, 4), 4) == [
        (True, 1, 1), (False, 1, 3), (True, 1, 1), (False, 1, 2)
    ]  # fmt: skip
    assert dispatch_plan(alternating_schedule(8, 4), 4)[1] == (False, 3, 1)
    assert dispatch_plan(alternating_schedule(6, 1), 4) == [(True, 3, 2)]
    assert dispatch_plan(alternating_schedule(6, 2), 1) == [(True, 1, 1), (False, 1, 1)] * 3


def test_scanned_calls_match_single_steps(setup):
    # On accelerators a run of same-kind steps is scanned; the result must not depend on it.
    # poison_every=1: one run of 6 poisoned steps, scanned 3 per call. (Scanned clean steps
    # are train_epoch's scanned function, tested in test_trainer.py.)
    single, clean, pool, _ = setup
    scanned = _trainer(steps_per_call=4)
    mask = _random_mask(14, 0.3)
    results = []
    for trainer in (single, scanned):
        state, stats = trainer.train_epoch_alternating(
            _fresh(trainer), clean, pool, jax.random.key(0), update_mask=mask,
            poison_every=1, poison_batch_size=3,
        )  # fmt: skip
        results.append((_host(state.params), stats.poison_steps, stats.clean_steps))
    assert results[0][1:] == results[1][1:] == (6, 0)
    chex.assert_trees_all_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)


def test_alternating_epoch_on_two_devices_matches_one(setup):
    one, clean, pool, _ = setup
    two = _trainer(num_devices=2)
    mask = _random_mask(15, 0.3)
    params = []
    for trainer in (one, two):
        c = trainer.put(*jax.device_get((clean.images, clean.labels)))
        p = trainer.put(*jax.device_get((pool.images, pool.labels)))
        state, _ = trainer.train_epoch_alternating(
            _fresh(trainer), c, p, jax.random.key(0), update_mask=mask, poison_batch_size=3
        )
        assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == trainer.mesh.size
        params.append(_host(state.params))
    chex.assert_trees_all_close(params[0], params[1], rtol=1e-4, atol=1e-5)


def test_alternating_epoch_rejects_bad_arguments(setup):
    trainer, clean, pool, _ = setup
    state = _fresh(trainer)
    mask = _random_mask(16, 0.5)
    with pytest.raises(ValueError, match="poison_batch_size"):
        trainer.train_epoch_alternating(
            state, clean, pool, jax.random.key(0), update_mask=mask, poison_batch_size=B + 1
        )
    with pytest.raises(ValueError, match="structure of the parameters"):
        trainer.train_epoch_alternating(
            state, clean, pool, jax.random.key(0), update_mask={"Conv_0": mask["Conv_0"]}
        )
    with pytest.raises(ValueError, match="update_mask_mode"):
        trainer.train_epoch_alternating(
            state, clean, pool, jax.random.key(0), update_mask=mask, update_mask_mode="soft"
        )
