"""Step variants, the engine's one extension point: the plain variant is the plain step, a
custom loss gets traced `extra` inputs and the model's intermediates and reports its terms,
and variants key the compiled functions.

The tiny test network on 8×8 images, batches of 8: every compile is well under a second.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbd.data import augment as augment_lib
from jaxbd.data import make_synthetic
from jaxbd.models import tiny_cnn
from jaxbd.train import (
    PLAIN,
    CosineSchedule,
    EpochStats,
    LossOutput,
    StepVariant,
    Trainer,
    cross_entropy_loss,
    make_mesh,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
LR, MOMENTUM, WD = 0.1, 0.9, 5e-4
B = 8
MODEL = tiny_cnn(width=4)


def _trainer(**augmentation):
    return Trainer(
        MODEL,
        make_mesh(1),
        batch_size=B,
        eval_batch_size=B,
        momentum=MOMENTUM,
        weight_decay=WD,
        mean=MEAN,
        std=STD,
        steps_per_call=1,
        progress=False,
        **augmentation,
    )


@pytest.fixture(scope="module")
def trainers():
    """One trainer with augmentation (crop and flip), one without (for hand-written steps)."""
    return {"augmented": _trainer(crop_padding=1), "plain": _trainer(crop_padding=0, flip=False)}


@pytest.fixture(scope="module")
def train_set():
    return make_synthetic(num_train=32, num_test=8, image_size=8, seed=0).train


def _state(trainer):
    schedule = CosineSchedule.create(LR, 1000)
    return trainer.init_state(jax.random.key(0), (8, 8, 3), schedule, rng=jax.random.key(1))


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _assert_bit_identical(a, b):
    for x, y in zip(jax.tree.leaves(_host(a)), jax.tree.leaves(_host(b)), strict=True):
        np.testing.assert_array_equal(x, y)


def _squared_distance(params, anchor):
    return sum(
        jnp.sum(jnp.square(p - a))
        for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor), strict=True)
    )


def anchored_loss(model, params, batch_stats, x, labels, weights, extra):
    """CE plus λ·||params − anchor||², with `extra = {"anchor": params-like, "lam": scalar}`."""
    out = cross_entropy_loss(model, params, batch_stats, x, labels, weights)
    distance = _squared_distance(params, extra["anchor"])
    loss = out.loss + extra["lam"] * distance
    return LossOutput(loss, out.logits, out.batch_stats, {"ce": out.loss, "distance": distance})


ANCHORED = StepVariant(loss_fn=anchored_loss)


def _anchor_extra(trainer, state, seed, lam):
    rng = np.random.default_rng(seed)
    anchor = jax.tree.map(
        lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape).astype(np.float32),
        jax.device_get(state.params),
    )
    return trainer.replicate({"anchor": anchor, "lam": jnp.float32(lam)})


@jax.jit
def _reference_anchored_step(state, images, labels, weights, extra):
    """The anchored objective's SGD step written out by hand: PyTorch SGD (momentum, L2 weight
    decay) with the pruning mask, as `make_train_step`'s plain step, no augmentation."""
    x = augment_lib.normalize(images, MEAN, STD)

    def objective(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        (logits, _), updates = MODEL.apply(variables, x, train=True, mutable=["batch_stats"])
        ce = jnp.mean(weights * optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        distance = _squared_distance(params, extra["anchor"])
        return ce + extra["lam"] * distance, (ce, distance, updates["batch_stats"])

    (loss, (ce, distance, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params
    )
    lr = state.schedule(state.step)
    buf = jax.tree.map(
        lambda b, g, m, p: MOMENTUM * b + g * m + WD * p,
        state.opt_state[1].trace,  # chain(add_decayed_weights, trace)
        grads,
        state.mask,
        state.params,
    )
    params = jax.tree.map(lambda p, b, m: (p - lr * b) * m, state.params, buf, state.mask)
    return params, buf, batch_stats, loss, {"ce": ce, "distance": distance}


def test_plain_variant_is_the_step_without_a_variant(trainers, train_set):
    # An epoch of the PLAIN variant's compiled steps, replayed step by step with the engine's
    # step without a variant (`trainer.train_step`), with augmentation: bit-identical.
    trainer = trainers["augmented"]
    assert StepVariant() == PLAIN and hash(StepVariant()) == hash(PLAIN)
    assert trainer.compiled_steps(StepVariant()) is trainer.compiled_steps(PLAIN)
    data = trainer.put(train_set.images, train_set.labels)
    state, stats, presentations = trainer.train_epoch(
        _state(trainer), data, jax.random.key(2), variant=StepVariant(), record_presentations=True
    )
    assert stats.steps == 4 and stats.extra == {}
    step = jax.jit(trainer.train_step)
    replay = _state(trainer)
    for rows in np.asarray(presentations.indices):
        replay, out = step(replay, data.images[rows], data.labels[rows], data.weights[rows])
    _assert_bit_identical(
        (state.params, state.batch_stats, state.opt_state, state.step),
        (replay.params, replay.batch_stats, replay.opt_state, replay.step),
    )
    assert out.terms == {}


def test_custom_loss_with_extra_matches_a_hand_written_step(trainers, train_set):
    trainer = trainers["plain"]
    data = trainer.put(train_set.images, train_set.labels)
    steps = trainer.compiled_steps(ANCHORED)
    state = _state(trainer)
    extra = _anchor_extra(trainer, state, seed=0, lam=0.05)
    for first in (0, B):  # the second step also checks the momentum carried over
        rows = jnp.arange(first, first + B, dtype=jnp.int32)
        batch = (data.images[rows], data.labels[rows], data.weights[rows])
        params, buf, batch_stats, loss, terms = _reference_anchored_step(state, *batch, extra)
        state, out = steps(state, data, rows[None], None, extra)
        chex.assert_trees_all_close(state.params, params, rtol=1e-5, atol=1e-7)
        chex.assert_trees_all_close(state.opt_state[1].trace, buf, rtol=1e-5, atol=1e-7)
        chex.assert_trees_all_close(state.batch_stats, batch_stats, rtol=1e-5, atol=1e-7)
        # The loss's terms come back with the step, one entry per step of the call.
        assert set(out.terms) == {"ce", "distance"} and out.terms["ce"].shape == (1,)
        chex.assert_trees_all_close(
            (out.loss[0], out.terms["ce"][0], out.terms["distance"][0]),
            (loss, terms["ce"], terms["distance"]),
            rtol=1e-5,
        )
        assert float(terms["distance"]) > 0


def test_custom_loss_terms_are_epoch_means_and_extra_values_do_not_recompile(trainers, train_set):
    trainer = trainers["plain"]
    data = trainer.put(train_set.images, train_set.labels)
    state = _state(trainer)
    for epoch, lam in enumerate((0.05, 0.0, 1.0)):  # new anchors, new λ: values, not shapes
        extra = _anchor_extra(trainer, state, seed=10 + epoch, lam=lam)
        start = jax.tree.map(jnp.copy, state)
        state, stats, presentations = trainer.train_epoch(
            state, data, jax.random.key(epoch), variant=ANCHORED, extra=extra,
            record_presentations=True,
        )  # fmt: skip
        assert isinstance(stats, EpochStats) and set(stats.extra) == {"ce", "distance"}
        # Replayed step by step: the epoch's figures are the means of the steps'.
        replay, losses, terms = start, [], []
        for rows in presentations.indices:
            batch = (data.images[rows], data.labels[rows], data.weights[rows])
            params, buf, batch_stats, loss, step_terms = _reference_anchored_step(
                replay, *batch, extra
            )
            replay = replay.replace(
                params=params,
                batch_stats=batch_stats,
                opt_state=(replay.opt_state[0], replay.opt_state[1]._replace(trace=buf)),
                step=replay.step + 1,
            )
            losses.append(float(loss))
            terms.append(_host(step_terms))
        np.testing.assert_allclose(stats.loss, np.mean(losses), rtol=1e-5)
        for name in ("ce", "distance"):
            np.testing.assert_allclose(
                stats.extra[name], np.mean([t[name] for t in terms]), rtol=1e-5
            )
        chex.assert_trees_all_close(state.params, replay.params, rtol=1e-4, atol=1e-6)
    assert trainer.compiled_steps(ANCHORED)._cache_size() == 1


def attention_loss(model, params, batch_stats, x, labels, weights, extra):
    """CE plus β · the mean attention map (channel mean of squared activations, as in
    attention distillation) of the first stage, read from the sown intermediates."""
    variables = {"params": params, "batch_stats": batch_stats}
    (logits, _), updates = model.apply(
        variables, x, train=True, mutable=["batch_stats", "intermediates"]
    )
    (stage1,) = updates["intermediates"]["stage1"]
    attention = jnp.mean(jnp.mean(jnp.square(stage1.astype(jnp.float32)), axis=-1))
    ce = jnp.mean(weights * optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    loss = ce + extra * attention
    return LossOutput(loss, logits, updates["batch_stats"], {"ce": ce, "attention": attention})


ATTENTION = StepVariant(loss_fn=attention_loss)


def test_loss_reading_intermediates_trains_and_updates_batch_norm(trainers, train_set):
    trainer = trainers["plain"]
    data = trainer.put(train_set.images, train_set.labels)
    state = _state(trainer)
    before = _host((state.params, state.batch_stats))
    rows = jnp.arange(B, dtype=jnp.int32)
    # The first step's attention term, computed directly from the model's sown stage output.
    x = augment_lib.normalize(data.images[rows], MEAN, STD)
    _, sown = MODEL.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        x,
        train=True,
        mutable=["batch_stats", "intermediates"],
    )
    expected = float(jnp.mean(jnp.square(sown["intermediates"]["stage1"][0])))
    beta = trainer.replicate(jnp.float32(0.5))
    state, out = trainer.compiled_steps(ATTENTION)(state, data, rows[None], None, beta)
    np.testing.assert_allclose(float(out.terms["attention"][0]), expected, rtol=1e-5)
    np.testing.assert_allclose(
        float(out.loss[0]), float(out.terms["ce"][0]) + 0.5 * expected, rtol=1e-5
    )
    for epoch in range(2):
        state, stats, _ = trainer.train_epoch(
            state, data, jax.random.key(epoch), variant=ATTENTION, extra=beta
        )
        assert np.isfinite(stats.loss)
        assert all(np.isfinite(v) for v in stats.extra.values())
        assert set(stats.extra) == {"ce", "attention"}
    # The intermediates do not leak into the state: the BatchNorm statistics keep their
    # structure, and both they and the parameters have moved.
    after = _host((state.params, state.batch_stats))
    assert jax.tree.structure(after) == jax.tree.structure(before)
    for name, old, new in (("params", before[0], after[0]), ("batch_stats", before[1], after[1])):
        changed = [np.any(a != b) for a, b in zip(*map(jax.tree.leaves, (old, new)), strict=True)]
        assert all(changed), name
    assert int(state.step) == 9
    assert trainer.compiled_steps(ATTENTION)._cache_size() == 1


def _loss_with(scale):
    """A new function object on every call, equal in what it computes."""

    def loss_fn(model, params, batch_stats, x, labels, weights, extra):
        out = cross_entropy_loss(model, params, batch_stats, x, labels, weights)
        return out._replace(loss=scale * out.loss)

    return loss_fn


def test_variants_key_the_compiled_functions(trainers, train_set):
    trainer = trainers["plain"]
    a, b = StepVariant(loss_fn=_loss_with(2.0)), StepVariant(loss_fn=_loss_with(2.0))
    # Equal fields but different function objects: different variants, different compiles.
    assert a != b
    assert trainer.compiled_steps(a) is not trainer.compiled_steps(b)
    assert (a, "none") in trainer._compiled and (b, "none") in trainer._compiled
    # A variant rebuilt from the same function object is the same key.
    assert StepVariant(loss_fn=a.loss_fn) == a
    assert trainer.compiled_steps(StepVariant(loss_fn=a.loss_fn)) is trainer.compiled_steps(a)
    # The same variant object: one compile across epochs.
    data = trainer.put(train_set.images, train_set.labels)
    state = _state(trainer)
    for epoch in range(3):
        state, stats, _ = trainer.train_epoch(state, data, jax.random.key(epoch), variant=a)
        assert np.isfinite(stats.loss)
    assert trainer.compiled_steps(a)._cache_size() == 1
    assert trainer.compiled_steps(b)._cache_size() == 0  # never called


@pytest.mark.parametrize("members", ["shared", "own"])
def test_only_the_plain_variant_trains_several_members(trainers, members):
    trainer = trainers["plain"]
    with pytest.raises(ValueError, match="plain step"):
        trainer.compiled_steps(ANCHORED, members=members)
    assert callable(trainer.compiled_steps(PLAIN, members=members))


def test_unknown_update_mask_mode_is_rejected():
    with pytest.raises(ValueError, match="update_mask_mode"):
        StepVariant(update_mask_mode="soft")
