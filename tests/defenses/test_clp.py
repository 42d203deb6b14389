"""CLP: UCLC against a NumPy SVD, the per-layer outlier rule, a planted high-Lipschitz
channel pruned (and nothing else), the plan (0 steps, details, curve), data-free planning
with no defender images, pairing by structure on PreActResNet, and settings errors.

Models: the tiny test network (width 8: conv1 has 8 filters, conv2 16) on 8×8 inputs, and a
PreActResNet at width 4 (traced only). Variables are drawn in NumPy on the abstract shapes.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.data import make_synthetic
from jaxbd.defenses import RepairContext, Variables, tune
from jaxbd.defenses.clp import CLP, U_GRID, clp_curve, clp_scores, outlier_channels, uclc
from jaxbd.defenses.defender_data import DefenderDataSettings, defender_data
from jaxbd.defenses.registry import hparams_config
from jaxbd.models import preact_resnet18, tiny_cnn
from jaxbd.prune import conv_bn_pairs
from jaxbd.settings import InvalidSettingError
from jaxbd.train import Trainer, dense_mask, make_mesh

IMAGE = (8, 8, 3)
MODEL = tiny_cnn(width=8)
PLANTED = 5  # the conv2 filter made high-Lipschitz


def _variables(model, seed=0):
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *IMAGE)), train=False)
    )

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            value = rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
        elif name in ("scale", "var"):
            value = 1 + 0.3 * rng.uniform(size=leaf.shape)
        else:
            value = 0.1 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, jnp.float32)

    v = jax.tree_util.tree_map_with_path(draw, shapes)
    return v["params"], v["batch_stats"]


def _planted():
    params, stats = _variables(MODEL)
    conv2 = params["conv2"]["kernel"]
    params["conv2"]["kernel"] = conv2.at[..., PLANTED].multiply(6.0)
    params["bn2"]["scale"] = params["bn2"]["scale"].at[PLANTED].multiply(4.0)
    return Variables(params=params, batch_stats=stats, mask=dense_mask(params))


def _context(data=True):
    trainer = Trainer(
        MODEL,
        make_mesh(1),
        batch_size=8,
        eval_batch_size=16,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        steps_per_call=1,
        progress=False,
    )
    if not data:  # r = 0: only the model
        return RepairContext(
            trainer=trainer,
            defender=None,
            tune_data=None,
            key=jax.random.key(0),
            validate=None,
            num_classes=10,
        )
    train = make_synthetic(num_train=80, num_test=8, image_size=8, seed=0).train
    defender = defender_data(
        jax.random.key(7), train, np.zeros(len(train), bool), DefenderDataSettings(per_class=4)
    )
    calls = []

    def validate(params, batch_stats):
        calls.append(1)
        logits, _ = trainer.predict_variables(params, batch_stats, defender.val.images)
        return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == defender.val.labels))

    ctx = RepairContext(
        trainer=trainer,
        defender=defender,
        tune_data=trainer.put(defender.tune.images, defender.tune.labels),
        key=jax.random.key(0),
        validate=validate,
        num_classes=10,
    )
    return ctx, calls


def test_uclc_equals_numpy_svd():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 2, 5, 7)).astype(np.float32)  # kh ≠ kw: layout matters
    scale = rng.normal(size=7).astype(np.float32)
    var = rng.uniform(0.5, 2, size=7).astype(np.float32)
    want = []
    for k in range(7):
        w = kernel[..., k].transpose(2, 0, 1).reshape(5, 6)  # PyTorch's weight[k]: C_in × kh·kw
        sigma = np.linalg.svd(w.astype(np.float64), compute_uv=False).max()
        want.append(sigma * abs(scale[k]) / np.sqrt(var[k] + 1e-3))
    np.testing.assert_allclose(uclc(kernel, scale, var, 1e-3), want, rtol=1e-5)


def test_outlier_rule_uses_the_unbiased_std_per_layer():
    s = np.array([1.0, 1.1, 0.9, 1.0, 5.0])
    assert s.mean() + 1.5 * s.std(ddof=1) < 5.0 < s.mean() + 3.0 * s.std(ddof=1)
    np.testing.assert_array_equal(outlier_channels(s, 1.5), [4])
    assert outlier_channels(s, 3.0).size == 0
    assert outlier_channels(np.array([7.0]), 0.0).size == 0  # one channel: no std
    np.testing.assert_array_equal(outlier_channels(s, 0.0), [4])


def test_planted_channel_is_pruned_and_nothing_else():
    ctx, calls = _context()
    variables = _planted()
    plan = CLP().plan(ctx, variables)
    assert plan.steps == 0
    d = plan.details
    assert d["layers"]["conv2"]["channels_pruned"] == [PLANTED]
    assert d["layers"]["conv2"]["bn"] == "bn2"
    # 8 channels can never exceed mean + 3·std (max z-score is 7/√8 < 3).
    assert d["layers"]["conv1"]["channels_pruned"] == []
    assert d["num_channels_pruned"] == 1 and d["num_channels"] == 24
    assert d["pruned_per_layer"] == {"conv1": 0, "conv2": 1}
    assert d["unscored_convs"] == []
    # The mask: the filter's kernel slice and its own BN's scale and shift, nothing else.
    mask = plan.variables.mask
    assert np.all(np.asarray(mask["conv2"]["kernel"][..., PLANTED]) == 0)
    assert float(mask["bn2"]["scale"][PLANTED]) == 0 and float(mask["bn2"]["bias"][PLANTED]) == 0
    assert sum(int(np.sum(np.asarray(m) == 0)) for m in jax.tree.leaves(mask)) == 3 * 3 * 8 + 2
    assert float(jnp.abs(plan.variables.params["bn2"]["scale"][PLANTED])) == 0
    # The curve: u = 0..10, monotone non-increasing counts, validation accuracy per u.
    curve = d["curve"]
    assert [r["u"] for r in curve] == list(U_GRID) and curve[-1]["u"] == 10.0
    counts = [r["num_pruned"] for r in curve]
    assert counts == sorted(counts, reverse=True) and counts[0] >= 1
    assert all(0 <= r["val_accuracy"] <= 1 for r in curve)
    assert len(calls) == len(U_GRID)  # validation only, once per u
    # The shared loop returns the pruned model as planned (no steps).
    result = tune(ctx, plan, delta=1.0)
    assert result.steps == 0
    assert float(result.variables.params["bn2"]["scale"][PLANTED]) == 0


def test_data_free_plan_needs_no_defender_images():
    plan = CLP().plan(_context(data=False), _planted())
    assert plan.steps == 0
    assert plan.details["layers"]["conv2"]["channels_pruned"] == [PLANTED]
    assert all(set(r) == {"u", "num_pruned"} for r in plan.details["curve"])
    assert CLP.data_free


def test_existing_mask_is_kept_and_combined():
    variables = _planted()
    mask = dict(variables.mask)
    mask["conv1"] = {"kernel": variables.mask["conv1"]["kernel"].at[..., 0].set(0.0)}
    plan = CLP().plan(_context(data=False), dataclasses.replace(variables, mask=mask))
    assert np.all(np.asarray(plan.variables.mask["conv1"]["kernel"][..., 0]) == 0)
    assert np.all(np.asarray(plan.variables.params["conv1"]["kernel"][..., 0]) == 0)
    assert np.all(np.asarray(plan.variables.mask["conv2"]["kernel"][..., PLANTED]) == 0)


def test_preact_scores_only_convs_with_their_own_bn():
    model = preact_resnet18(width=4)
    params, stats = _variables(model)
    pairs = conv_bn_pairs(model, params, IMAGE)
    scores = clp_scores(params, stats, pairs)
    assert "stem_conv" in scores and "stage2_block1/conv1" in scores
    assert "stage2_block1/conv2" not in scores and "stage2_block1/shortcut_conv" not in scores
    assert len(scores) == 9  # the stem and the eight conv1s
    # Each score uses the BN that normalizes that conv's output.
    b = "stage3_block1"
    want = uclc(params[b]["conv1"]["kernel"], params[b]["bn2"]["scale"], stats[b]["bn2"]["var"])
    np.testing.assert_allclose(scores[f"{b}/conv1"], want)
    rows = clp_curve(params, stats, pairs, (0.0, 10.0))
    assert rows[0]["num_pruned"] >= rows[1]["num_pruned"] == 0


def test_settings():
    assert CLP().u == 3.0 and CLP().name == "clp"
    with pytest.raises(InvalidSettingError, match="steps"):
        CLP(steps=10)
    with pytest.raises(InvalidSettingError, match="u"):
        CLP(u=-1.0)
    config = hparams_config(CLP)
    assert config.u == 3.0 and config.steps == 0 and tuple(config.curve_us) == U_GRID
