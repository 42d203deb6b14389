"""Pivotal Tuning with SLOL (Lukas & Kerschbaum 2023, Algorithm 3): the loss against a plain
double loop, jittability, a frozen pivot, and a short repair through the shared tuning loop.

The tiny test network on 8×8 synthetic images, batches of 8: every compile is well under a
second.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.data import make_synthetic
from jaxbd.defenses import RepairContext, Variables, defender_data, tune
from jaxbd.defenses.defender_data import DefenderDataSettings
from jaxbd.defenses.pivotal_tuning import (
    PivotalTuning,
    param_distance,
    slol_loss,
)
from jaxbd.models import tiny_cnn
from jaxbd.settings import InvalidSettingError
from jaxbd.train import Trainer, dense_mask, init_variables, make_mesh

C = 4
B = 8


def _cos(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


def _slol_reference(pivot, tuned, labels, num_classes):
    """Algorithm 3 as a plain double loop over the classes present, in float64."""
    pivot, tuned = np.asarray(pivot, np.float64), np.asarray(tuned, np.float64)
    present = [c for c in range(num_classes) if np.any(labels == c)]
    centre = {c: pivot[labels == c].mean(0) for c in present}
    centre_hat = {c: tuned[labels == c].mean(0) for c in present}
    total = 0.0
    for i, j in itertools.combinations(present, 2):
        total += _cos(centre[i] - centre[j], centre_hat[i] - centre_hat[j])
        total += _cos(centre_hat[i], centre_hat[j])
    return total


@pytest.mark.parametrize(
    "labels",
    [
        np.array([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]),  # every class
        np.array([0, 2, 2, 0, 2, 0, 0, 2, 2, 2, 0, 0]),  # classes 1 and 3 absent
        np.array([3, 1, 3, 3, 1, 3, 3, 3, 1, 3, 3, 1]),
    ],
)
def test_slol_matches_a_double_loop(labels):
    rng = np.random.default_rng(0)
    pivot = rng.normal(size=(len(labels), 6)).astype(np.float32)
    tuned = rng.normal(size=(len(labels), 6)).astype(np.float32)
    got = slol_loss(jnp.asarray(pivot), jnp.asarray(tuned), jnp.asarray(labels), C)
    np.testing.assert_allclose(float(got), _slol_reference(pivot, tuned, labels, C), atol=1e-5)


def test_slol_single_class_is_zero_and_zero_vectors_are_safe():
    rng = np.random.default_rng(1)
    features = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
    assert float(slol_loss(features, features, jnp.full(8, 2), C)) == 0.0
    # Zero features: every cosine is 0 (not NaN), and so is the gradient.
    zeros, labels = jnp.zeros((8, 5)), jnp.arange(8) % C
    assert float(slol_loss(zeros, zeros, labels, C)) == 0.0
    grad = jax.grad(lambda t: slol_loss(zeros, t, labels, C))(zeros)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_slol_jits_and_ignores_out_of_range_labels():
    rng = np.random.default_rng(2)
    pivot = jnp.asarray(rng.normal(size=(10, 6)), jnp.float32)
    tuned = jnp.asarray(rng.normal(size=(10, 6)), jnp.float32)
    labels = jnp.asarray([0, 1, 2, 3, 0, 1, 2, 3, -1, -1])
    jitted = jax.jit(slol_loss, static_argnums=3)
    np.testing.assert_allclose(
        float(jitted(pivot, tuned, labels, C)), float(slol_loss(pivot, tuned, labels, C)), 1e-6
    )
    # A label of -1 counts for no class: the same as dropping the example.
    reference = _slol_reference(pivot[:8], tuned[:8], np.asarray(labels[:8]), C)
    np.testing.assert_allclose(float(jitted(pivot, tuned, labels, C)), reference, atol=1e-5)


def test_param_distance_is_the_mean_over_coordinates():
    a = {"w": jnp.ones((2, 3)), "b": jnp.zeros(4)}
    b = {"w": jnp.zeros((2, 3)), "b": jnp.full(4, 2.0)}
    np.testing.assert_allclose(float(param_distance(a, b)), (6 * 1 + 4 * 4) / 10)


def test_defaults_and_validation():
    repair = PivotalTuning()
    assert (repair.steps, repair.lr, repair.momentum, repair.weight_decay) == (2000, 0.01, 0.9, 0)
    assert (repair.slol_weight, repair.param_weight, repair.batch_size) == (0.05, 20000.0, 128)
    assert repair.name == "pivotal_tuning"
    with pytest.raises(InvalidSettingError):
        PivotalTuning(slol_weight=-1.0)
    with pytest.raises(InvalidSettingError):
        PivotalTuning(lr=0.0)


# -- the repair on a tiny model ----------------------------------------------------------


def _context():
    """A repair context on the tiny network: 20 tuning and 4 validation images."""
    model = tiny_cnn(num_classes=C, width=4)
    trainer = Trainer(
        model,
        make_mesh(1),
        batch_size=B,
        eval_batch_size=B,
        momentum=0.9,
        weight_decay=0.0,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        steps_per_call=1,
        progress=False,
    )
    train = make_synthetic(num_train=64, num_test=8, num_classes=C, image_size=8, seed=0).train
    defender = defender_data(
        jax.random.key(0),
        train,
        np.zeros(len(train), bool),
        DefenderDataSettings(per_class=6, val_fraction=0.2),
    )

    def validate(params, batch_stats):
        logits, _ = trainer.predict_variables(params, batch_stats, defender.val.images)
        return float(np.mean(np.argmax(np.asarray(logits), -1) == defender.val.labels))

    return RepairContext(
        trainer=trainer,
        defender=defender,
        tune_data=trainer.put(defender.tune.images, defender.tune.labels),
        key=jax.random.key(1),
        validate=validate,
        num_classes=C,
    )


@pytest.fixture(name="ctx", scope="module")
def ctx_fixture():
    return _context()


@pytest.fixture(scope="module")
def variables(ctx):
    params, batch_stats = init_variables(ctx.trainer.model, jax.random.key(2), (8, 8, 3))
    return Variables(params, batch_stats, dense_mask(params))


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def test_the_pivot_receives_no_gradient(ctx, variables):
    repair = PivotalTuning()
    plan = repair.plan(ctx, variables)
    # Tuned θ* moved away from the pivot, so every term (the distance too) is live.
    tuned = jax.tree.map(lambda p: p + 0.01, variables.params)
    x = jax.random.normal(jax.random.key(3), (B, 8, 8, 3))
    labels, weights = jnp.arange(B) % C, jnp.ones(B)

    def loss_of_pivot(pivot):
        out = plan.variant.loss_fn(
            ctx.trainer.model, tuned, variables.batch_stats, x, labels, weights, pivot
        )
        return out.loss

    grads = jax.grad(loss_of_pivot)(plan.extra)
    for leaf in jax.tree.leaves(grads):
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)
    # Differentiating with respect to θ* does see the pivot through the distance term.
    out = plan.variant.loss_fn(
        ctx.trainer.model, tuned, variables.batch_stats, x, labels, weights, plan.extra
    )
    assert set(out.terms) == {"ce", "slol", "param_distance"}
    assert float(out.terms["param_distance"]) == pytest.approx(1e-4, rel=1e-3)


def test_tuning_runs_compiles_once_and_keeps_the_pivot(ctx, variables):
    repair = PivotalTuning(steps=4, batch_size=B)
    plan = repair.plan(ctx, variables)
    assert repair.plan(ctx, variables).variant is plan.variant  # one variant per repair
    assert PivotalTuning(steps=4, batch_size=B).variant(C) is plan.variant
    pivot_before = _host(plan.extra)
    result = tune(ctx, plan, eval_every=2, delta=1.0)
    assert result.steps == 4 and len(result.rows) == 3
    for row in result.rows[1:]:
        for term in ("ce", "slol", "param_distance", "loss"):
            assert np.isfinite(row[term]), (term, row)
    assert ctx.trainer.compiled_steps(plan.variant)._cache_size() == 1
    # The pivot is unchanged and the tuned model moved away from it.
    for a, b in zip(jax.tree.leaves(pivot_before), jax.tree.leaves(_host(plan.extra)), strict=True):
        np.testing.assert_array_equal(a, b)
    moved = param_distance(result.variables.params, plan.extra["params"])
    assert 0 < float(moved) < float("inf")
