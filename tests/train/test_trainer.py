"""The engine: masked, weighted steps that never recompile; epochs; inference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.data import make_synthetic
from jaxbd.models import resnet18
from jaxbd.train import PLAIN, CosineSchedule, Trainer, make_mesh

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def setup():
    splits = make_synthetic(num_train=128, num_test=64, image_size=16, seed=0)
    trainer = Trainer(
        resnet18(num_classes=10, width=4),
        make_mesh(1),
        batch_size=32,
        eval_batch_size=32,
        mean=MEAN,
        std=STD,
        steps_per_call=2,
        progress=False,
    )
    data = trainer.put(splits.train.images, splits.train.labels)
    return splits, trainer, data


def fresh_state(trainer, mask=None, lr=0.1):
    return trainer.init_state(
        jax.random.key(0),
        (16, 16, 3),
        CosineSchedule.create(lr, 100),
        rng=jax.random.key(1),
        mask=mask,
    )


def test_epoch_learns_and_reports(setup):
    splits, trainer, data = setup
    state = fresh_state(trainer)
    losses = []
    for epoch in range(3):
        state, stats, presentations = trainer.train_epoch(
            state, data, jax.random.key(epoch), record_presentations=True
        )
        losses.append(stats.loss)
        if epoch == 0:
            compiles = trainer.compiled_steps(PLAIN)._cache_size()
    assert stats.steps == 4 and int(state.step) == 12
    # Every epoch runs the plain variant's compiled steps, compiled once.
    assert trainer.compiled_steps(PLAIN)._cache_size() == compiles
    assert stats.extra == {}  # the plain loss reports no terms
    assert losses[-1] < losses[0]
    # Presentations: every example of the epoch exactly once (128 = 4 full batches).
    assert presentations.indices.shape == (4, 32)
    assert sorted(np.asarray(presentations.indices).ravel()) == list(range(128))
    assert presentations.correct.dtype == jnp.bool_
    preds = trainer.predict_labels(state, splits.test.images)
    assert preds.shape == (64,) and preds.dtype == np.int32


def test_mask_keeps_pruned_weights_at_zero(setup):
    _, trainer, data = setup
    dense = fresh_state(trainer)
    rng = np.random.default_rng(0)
    mask = jax.tree.map(lambda p: rng.random(p.shape) < 0.5, jax.device_get(dense.params))
    state = fresh_state(trainer, mask=mask)
    state, _, _ = trainer.train_epoch(state, data, jax.random.key(0))
    params = jax.device_get(state.params)
    for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True):
        assert np.all(p[~m] == 0)  # pruned weights are exactly zero
        if m.sum() > 100:
            assert np.mean(p[m] != 0) > 0.99  # the others train


def test_indices_restrict_the_epoch(setup):
    _, trainer, data = setup
    subset = jnp.arange(0, 128, 2, dtype=jnp.int32)
    state = fresh_state(trainer)
    _, stats, presentations = trainer.train_epoch(
        state, data, jax.random.key(0), indices=subset, record_presentations=True
    )
    assert stats.steps == 2
    assert set(np.asarray(presentations.indices).ravel()) == set(range(0, 128, 2))


def test_zero_weights_leave_only_weight_decay(setup):
    # With all loss weights 0 the gradient is exactly 0, so the step is pure weight decay:
    # θ ← θ − lr·λ·θ on the first step (momentum buffer starts at 0).
    splits, trainer, _ = setup
    zero = trainer.put(splits.train.images, splits.train.labels, np.zeros(128, np.float32))
    state = fresh_state(trainer, lr=0.1)
    before = jax.device_get(state.params)
    step = jax.jit(trainer.train_step)
    batch = jnp.arange(32)
    state, out = step(state, zero.images[batch], zero.labels[batch], zero.weights[batch])
    assert float(out.loss) == 0.0
    expected = jax.tree.map(lambda p: p * (1 - 0.1 * 5e-4), before)
    chex.assert_trees_all_close(jax.device_get(state.params), expected, rtol=1e-6, atol=1e-8)


def test_changing_mask_weights_schedule_does_not_recompile(setup):
    splits, trainer, _ = setup
    step = jax.jit(chex.assert_max_traces(trainer.train_step, n=1))
    batch = jnp.arange(32)
    images, labels = jnp.asarray(splits.train.images[:32]), jnp.asarray(splits.train.labels[:32])
    state = fresh_state(trainer)
    state, _ = step(state, images, labels, jnp.ones(32))
    # A new mask (an IMP round), new weights (a coreset) and a new schedule (a new phase).
    pruned = jax.tree.map(lambda m: m.at[..., :1].set(0.0), state.mask)
    schedule = trainer.replicate(CosineSchedule.create(0.01, 7, warmup_steps=2))
    state = state.replace(mask=pruned, schedule=schedule)
    state, _ = step(state, images, labels, jax.random.uniform(jax.random.key(0), (32,)))
    state, _ = step(state, images[::-1], labels[::-1], jnp.zeros(32))
    del batch


def test_batch_size_must_divide_over_devices():
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        Trainer(resnet18(width=4), make_mesh(4), batch_size=30, mean=MEAN, std=STD, progress=False)


def test_too_many_devices_is_a_clear_error():
    with pytest.raises(ValueError, match="available"):
        make_mesh(len(jax.devices()) + 1)
