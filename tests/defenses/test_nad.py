"""Neural Attention Distillation (Li et al. 2021): attention maps against NumPy, taps chosen by
shape (no 1×1 stage), the loss reduces to CE when student and teacher agree, and a short
repair through the shared tuning loop.

Tiny models on 8×8 synthetic images, batches of 8; the ResNet-18 is only traced for shapes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbd.data import make_synthetic
from jaxbd.defenses import RepairContext, Variables, defender_data, tune
from jaxbd.defenses.defender_data import DefenderDataSettings
from jaxbd.defenses.nad import NAD, attention_map, attention_taps
from jaxbd.models import Classifier, resnet18, tiny_cnn
from jaxbd.settings import InvalidSettingError
from jaxbd.train import Trainer, dense_mask, init_variables, make_mesh

C = 4
B = 8


def _attention_reference(a, p):
    a = np.asarray(a, np.float64)
    m = (np.abs(a) ** p).sum(-1).reshape(a.shape[0], -1)
    return m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-6)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_attention_map_matches_numpy(p):
    a = np.random.default_rng(0).normal(size=(3, 4, 5, 6)).astype(np.float32)
    got = np.asarray(attention_map(jnp.asarray(a), p))
    assert got.shape == (3, 20)
    np.testing.assert_allclose(got, _attention_reference(a, p), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, rtol=1e-5)


def test_attention_map_of_zeros_is_zero_with_a_finite_gradient():
    zeros = jnp.zeros((2, 3, 3, 4))
    np.testing.assert_array_equal(np.asarray(attention_map(zeros)), 0.0)
    grad = jax.grad(lambda a: jnp.sum(attention_map(a)))(zeros)
    assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize(("size", "taps"), [(16, 4), (8, 3)])
def test_taps_exclude_1x1_stages(size, taps):
    # ResNet-18 at width 4: stage4 is 2×2 on 16×16 images, 1×1 (a dead term) on 8×8.
    model = resnet18(num_classes=C, width=4)
    params = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )
    v = Classifier(model, params["params"], params["batch_stats"])
    assert attention_taps(v, (size, size, 3)) == tuple(f"stage{i + 1}" for i in range(taps))


def test_defaults_and_validation():
    repair = NAD()
    assert (repair.steps, repair.lr, repair.momentum, repair.weight_decay) == (
        2000,
        0.01,
        0.9,
        1e-4,
    )
    assert (repair.teacher_steps, repair.teacher_lr, repair.attention_weight, repair.p) == (
        1000,
        None,
        1000.0,
        2.0,
    )
    assert repair.batch_size == 128 and repair.name == "nad"
    with pytest.raises(InvalidSettingError):
        NAD(teacher_steps=-1)
    with pytest.raises(InvalidSettingError):
        NAD(teacher_lr=0.0)
    with pytest.raises(InvalidSettingError):
        NAD(p=0.0)


class _NoNormCNN(nn.Module):
    """Two sown conv stages and a head, without BatchNorm: the same variables give the same
    stage outputs in training and inference mode, so student = teacher is exact."""

    @nn.compact
    def __call__(self, x, train=False):
        for i, (channels, stride) in enumerate(((4, 1), (8, 2))):
            x = nn.relu(nn.Conv(channels, (3, 3), stride, name=f"conv{i + 1}")(x))
            self.sow("intermediates", f"stage{i + 1}", x)
        features = jnp.mean(x, axis=(1, 2))
        return nn.Dense(C, name="head")(features), features


def test_loss_is_ce_when_student_equals_teacher():
    model = _NoNormCNN()
    x = jax.random.normal(jax.random.key(0), (B, 8, 8, 3))
    params = model.init(jax.random.key(1), x)["params"]
    labels, weights = jnp.arange(B) % C, jnp.ones(B)
    v = Classifier(model, params, {}, mask=dense_mask(params))
    taps = attention_taps(v, (8, 8, 3))
    assert taps == ("stage1", "stage2")
    loss_fn = NAD().variant(taps).loss_fn
    # Jitted: op-by-op convolutions on the CPU are far slower than one compile.
    loss = jax.jit(lambda s, t: loss_fn(model, s, {}, x, labels, weights, t))
    out = loss(params, {"params": params, "batch_stats": {}})
    logits, _ = model.apply({"params": params}, x)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    # Zero up to rounding: training- and inference-mode calls compile to separate programs.
    assert abs(float(out.terms["attention"])) < 1e-12
    np.testing.assert_allclose(float(out.loss), float(ce), rtol=1e-6)
    # A different teacher makes the term live, and the teacher gets no gradient.
    teacher = {"params": jax.tree.map(lambda p: p * 1.5 + 0.1, params), "batch_stats": {}}
    assert float(loss(params, teacher).terms["attention"]) > 0
    grads = jax.jit(jax.grad(lambda t: loss(params, t).loss))(teacher)
    for leaf in jax.tree.leaves(grads):
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)


def _context():
    """A repair context on the tiny network: 20 tuning and 4 validation images."""
    model = tiny_cnn(num_classes=C, width=4)
    trainer = Trainer(
        model,
        make_mesh(1),
        batch_size=B,
        eval_batch_size=B,
        momentum=0.9,
        weight_decay=1e-4,
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


def test_short_repair_through_tune(ctx):
    params, batch_stats = init_variables(ctx.trainer.model, jax.random.key(2), (8, 8, 3))
    variables = Variables(params, batch_stats, dense_mask(params))
    repair = NAD(steps=2, teacher_steps=2, batch_size=B)
    plan = repair.plan(ctx, variables)
    assert plan.details["taps"] == ["stage1", "stage2"]
    assert 0.0 <= plan.details["teacher_val_accuracy"] <= 1.0
    assert NAD(steps=2, teacher_steps=2, batch_size=B).variant(("stage1", "stage2")) is (
        plan.variant
    )
    # The teacher is a trained copy: it moved, and the student's start did not.
    moved = jax.tree.leaves(
        jax.tree.map(lambda a, b: jnp.any(a != b), plan.extra["params"], params)
    )
    assert any(bool(m) for m in moved)
    result = tune(ctx, plan, eval_every=1, delta=1.0)
    assert result.steps == 2 and len(result.rows) == 3
    for row in result.rows[1:]:
        for term in ("ce", "attention", "loss"):
            assert np.isfinite(row[term]), (term, row)
        assert row["attention"] > 0  # a fine-tuned teacher differs from the student
    assert ctx.trainer.compiled_steps(plan.variant)._cache_size() == 1
