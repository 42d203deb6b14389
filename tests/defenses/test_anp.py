"""ANP: the BatchNorm finder, the perturbed parameters, masks kept in [0, 1], the candidate
masks, the validation sweep as one compiled vectorized program (equal to one evaluation per
candidate), the pruning choice under a known validation profile, pruned channels' scale
exactly zero in the returned mask and parameters, determinism, and clear errors.

No decision can read test data: a `RepairContext` holds the defender's tuning and validation
images only, and the plan is a function of the context and the model (same context, same
plan: tested).

Models: the tiny test network (width 4: BatchNorm layers of 4 and 8 channels) on 8×8
synthetic images; ResNets at width 4 for the BatchNorm finder.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_repair_context

from jaxbd.defenses import RepairContext, Variables
from jaxbd.defenses import anp as anp_lib
from jaxbd.defenses.anp import (
    ANP,
    MaskOptimization,
    bn_layers,
    candidate_keeps,
    choose_candidate,
    init_masks,
    optimize_masks,
    perturbed_params,
    pruning_mask,
    sweep_accuracy,
)
from jaxbd.defenses.anp_sweep import _sweep_program
from jaxbd.models import Classifier, tiny_cnn
from jaxbd.models.resnet import ResNet, resnet18
from jaxbd.prune.masks import apply_mask
from jaxbd.settings import InvalidSettingError
from jaxbd.train import dense_mask, init_variables

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
MODEL = tiny_cnn(width=4)
C = 10


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_variables():
    params, batch_stats = init_variables(MODEL, jax.random.key(3), (8, 8, 3))
    return Variables(params=params, batch_stats=batch_stats, mask=dense_mask(params))


def _context(repair: ANP, key=0) -> RepairContext:
    return tiny_repair_context(repair, MODEL, mean=MEAN, std=STD, key=key)


def _small(**overrides) -> ANP:
    return ANP(**{"iterations": 3, "batch_size": 8, **overrides})


# -- the BatchNorm layers and the perturbed parameters ------------------------------------


def test_bn_layers_found_by_structure():
    # Shapes suffice (the finder reads structure only), and skip initializing ResNet-18.
    params, stats = jax.eval_shape(
        lambda: init_variables(resnet18(width=4), jax.random.key(0), (8, 8, 3))
    )
    layers = bn_layers(params, stats)
    # stem + 2 per basic block × 8 + the 3 projection shortcuts of stages 2–4.
    assert len(layers) == 1 + 2 * 8 + 3
    assert "stem_bn" in layers and "stage2_block1/shortcut_bn" in layers
    assert "stage4_block2/bn2" in layers and "head" not in layers
    assert bn_layers(params) == layers  # these models have no other scale/bias modules

    small, small_stats = jax.eval_shape(
        lambda: init_variables(ResNet(width=4, stage_sizes=(1, 1)), jax.random.key(0), (8, 8, 3))
    )
    assert len(bn_layers(small, small_stats)) == 1 + 2 * 2 + 1

    # A LayerNorm-like module (scale and bias, no running statistics) is not a BatchNorm.
    fake = {"bn": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}, "ln": dict(params["stem_bn"])}
    fake_stats = {"bn": {"mean": jnp.zeros(3), "var": jnp.ones(3)}}
    assert bn_layers(fake, fake_stats) == ("bn",)


def test_perturbed_params_identity_and_formula(model_variables):
    params = model_variables.params
    layers = bn_layers(params, model_variables.batch_stats)
    assert len(layers) == 2
    ones = init_masks(params, layers)
    zeros = jax.tree.map(jnp.zeros_like, ones)
    for out in (perturbed_params(params, ones), perturbed_params(params, ones, zeros, zeros)):
        jax.tree.map(np.testing.assert_array_equal, out, params)

    rng = np.random.default_rng(0)
    masks = {n: jnp.asarray(rng.uniform(size=m.shape), jnp.float32) for n, m in ones.items()}
    delta = {n: jnp.asarray(rng.uniform(-0.4, 0.4, m.shape), jnp.float32) for n, m in ones.items()}
    xi = {n: jnp.asarray(rng.uniform(-0.4, 0.4, m.shape), jnp.float32) for n, m in ones.items()}
    out = perturbed_params(params, masks, delta, xi)
    for n in layers:
        module = dict(params)
        for part in n.split("/"):
            module = module[part]
        got = out
        for part in n.split("/"):
            got = got[part]
        np.testing.assert_allclose(got["scale"], module["scale"] * (masks[n] + delta[n]), 1e-6)
        np.testing.assert_allclose(got["bias"], module["bias"] * (1 + xi[n]), 1e-6)
    np.testing.assert_array_equal(out["head"]["kernel"], params["head"]["kernel"])


# -- the mask optimization ------------------------------------------------------------------


def test_masks_stay_in_unit_interval_and_compile_once(model_variables):
    traced = anp_lib.TRACES["optimize_masks"]
    ctx = _context(_small())
    v = model_variables
    classifier = Classifier(MODEL, v.params, v.batch_stats, mean=MEAN, std=STD)
    kwargs = dict(iterations=4, batch_size=8)
    # A huge learning rate drives masks past both ends: the projection must hold them.
    result = optimize_masks(
        classifier, ctx.tune_data.images, ctx.tune_data.labels,
        jax.random.key(1), lr=50.0, **kwargs,
    )  # fmt: skip
    values = np.concatenate([np.asarray(m) for m in result.masks.values()])
    assert values.shape == (4 + 8,)
    assert np.all((values >= 0) & (values <= 1))
    assert np.any(values < 1)  # the masks moved
    assert result.clean_loss.shape == (4,) and np.all(np.asarray(result.robust_loss) > 0)
    again = optimize_masks(
        classifier, ctx.tune_data.images, ctx.tune_data.labels,
        jax.random.key(1), lr=50.0, **kwargs,
    )  # fmt: skip
    jax.tree.map(np.testing.assert_array_equal, again.masks, result.masks)
    assert anp_lib.TRACES["optimize_masks"] == traced + 1  # 2 runs of 4 iterations, 1 trace
    # A scan over chunks of 2 iterations draws the same batches and noise (keys are folded
    # from the iteration index), so it reaches the same masks.
    scanned = optimize_masks(
        classifier, ctx.tune_data.images, ctx.tune_data.labels,
        jax.random.key(1), lr=50.0, chunk=2, **kwargs,
    )  # fmt: skip
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), scanned.masks, result.masks
    )


# -- candidates, the sweep and the choice ---------------------------------------------------


def test_candidate_keeps_threshold_and_count():
    masks = {"a": jnp.asarray([0.0, 0.3, 0.05, 1.0]), "b": jnp.asarray([0.1, 0.05])}
    keeps = candidate_keeps(masks, (0.0, 0.05, 0.3), "threshold")
    np.testing.assert_array_equal(
        keeps["a"], [[1, 1, 1, 1], [0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]
    )
    np.testing.assert_array_equal(keeps["b"], [[1, 1], [1, 1], [1, 0], [0, 0]])  # m ≤ t pruned
    by_count = candidate_keeps(masks, (0.5,), "count")  # 3 lowest of 6: 0.0, 0.05 (a), 0.05 (b)
    np.testing.assert_array_equal(by_count["a"][1], [0, 1, 0, 1])
    np.testing.assert_array_equal(by_count["b"][1], [1, 0])
    with pytest.raises(ValueError, match="prune_by"):
        candidate_keeps(masks, (0.1,), "rank")


def test_choose_candidate_keeps_last_within_budget():
    # Base 0.9, Δ = 0.04: 0.89 and 0.87 are within, 0.85 is not and ends the search (the
    # later 0.88 is never taken).
    assert choose_candidate([0.9, 0.89, 0.87, 0.85, 0.88], [0, 2, 4, 6, 8], 0.9, 0.04) == 2
    assert choose_candidate([0.5, 0.9], [1, 2], 0.9, 0.04) == -1
    # Equal pruning: the first grid value that reaches it.
    assert choose_candidate([0.9, 0.9, 0.9], [0, 3, 3], 0.9, 0.0) == 1


def test_sweep_is_one_compiled_program_and_matches_per_candidate(model_variables):
    _sweep_program.cache_clear()
    traced = anp_lib.TRACES["sweep"]
    v = model_variables
    ctx = _context(_small())
    images, labels = ctx.defender.tune.images[:20], ctx.defender.tune.labels[:20]
    layers = bn_layers(v.params, v.batch_stats)
    rng = np.random.default_rng(0)
    for trial in range(2):  # new masks and a padded last batch: still one compile
        masks = {
            n: jnp.asarray(rng.uniform(size=m.shape))
            for n, m in init_masks(v.params, layers).items()
        }
        keeps = candidate_keeps(masks, anp_lib.DEFAULT_GRID)
        classifier = Classifier(MODEL, v.params, v.batch_stats, mean=MEAN, std=STD)
        acc = sweep_accuracy(classifier, keeps, images, labels, batch_size=8)
        assert acc.shape == (1 + 19,)
        for i in (0, 5, 12, 19):
            keep = {n: k[i] for n, k in keeps.items()}
            pruned = apply_mask(v.params, pruning_mask(v.params, keep))
            logits, _ = ctx.trainer.predict_variables(pruned, v.batch_stats, images)
            expected = np.mean(np.asarray(jnp.argmax(logits, -1)) == labels)
            assert acc[i] == pytest.approx(expected), (trial, i)
    assert _sweep_program(classifier.engine_model(), MEAN, STD)._cache_size() == 1
    assert anp_lib.TRACES["sweep"] == traced + 1


def test_plan_chooses_threshold_from_a_known_validation_profile(model_variables, monkeypatch):
    # Masks 0.05, 0.15, ... (12 channels), so threshold t prunes a known, increasing count.
    layers = bn_layers(model_variables.params, model_variables.batch_stats)
    values = iter(np.arange(12) * 0.1 + 0.05)
    masks = {
        n: jnp.asarray([next(values) for _ in range(m.shape[0])], jnp.float32)
        for n, m in init_masks(model_variables.params, layers).items()
    }
    grid = (0.0, 0.1, 0.2, 0.3, 0.4)  # prunes 0, 1, 2, 3, 4 channels
    profile = np.array([0.9, 0.9, 0.89, 0.87, 0.85, 0.88])  # unpruned first
    seen = {}

    def stub_optimize(*args, **kwargs):
        return MaskOptimization(masks, jnp.zeros(3), jnp.zeros(3))

    def stub_sweep(classifier, keeps, images, labels, **kwargs):
        seen["images"] = images
        return profile

    monkeypatch.setattr(anp_lib, "optimize_masks", stub_optimize)
    monkeypatch.setattr(anp_lib, "sweep_accuracy", stub_sweep)
    repair = _small(grid=grid, delta_prune=0.04)
    ctx = _context(repair)
    plan = repair.plan(ctx, model_variables)
    d = plan.details
    assert d["threshold"] == 0.2 and d["num_pruned"] == 2
    assert [c["num_pruned"] for c in d["candidates"]] == [0, 1, 2, 3, 4]
    assert d["base_val_accuracy"] == 0.9 and d["val_accuracy"] == 0.87
    assert seen["images"] is ctx.defender.val.images  # validation images, nothing else


# -- the repair ------------------------------------------------------------------------------


def test_pruned_scale_is_exactly_zero_and_plan_is_deterministic(model_variables):
    repair = _small(prune_by="count", grid=(0.25,), delta_prune=1.0)
    ctx = _context(repair)
    plan = repair.plan(ctx, model_variables)
    again = repair.plan(_context(repair), model_variables)
    assert plan.details == again.details
    jax.tree.map(np.testing.assert_array_equal, plan.variables.mask, again.variables.mask)

    d = plan.details
    assert d["rate"] == 0.25 and d["num_pruned"] == 3 and d["num_channels"] == 12
    assert plan.steps == 0 and d["iterations"] == 3
    values = np.concatenate([d["mask_values"][n] for n in bn_layers(plan.variables.params)])
    lowest = set(np.argsort(values, kind="stable")[:3].tolist())
    pruned_flat = []
    for n in bn_layers(plan.variables.params):
        mask, params = plan.variables.mask[n], plan.variables.params[n]
        pruned = np.asarray(mask["scale"]) == 0
        pruned_flat.append(pruned)
        assert d["pruned_per_layer"][n] == int(pruned.sum())
        assert np.all(np.asarray(params["scale"])[pruned] == 0.0)
        np.testing.assert_array_equal(mask["bias"], 1.0)  # the shift is kept (the paper's prune)
        np.testing.assert_array_equal(params["bias"], model_variables.params[n]["bias"])
    assert set(np.flatnonzero(np.concatenate(pruned_flat)).tolist()) == lowest
    # Everything that is not a pruned BatchNorm scale is untouched.
    np.testing.assert_array_equal(plan.variables.mask["head"]["kernel"], 1.0)


def test_plan_threshold_prunes_every_channel_at_or_below_it(model_variables):
    # Masks never exceed 1, so threshold 1.0 prunes every channel; Δ = 1 admits it. ε = 0
    # runs the clean-loss-only branch.
    repair = _small(grid=(1.0,), delta_prune=1.0, anp_eps=0.0)
    plan = repair.plan(_context(repair), model_variables)
    assert plan.details["threshold"] == 1.0 and plan.details["num_pruned"] == 12
    for n in bn_layers(plan.variables.params):
        np.testing.assert_array_equal(plan.variables.params[n]["scale"], 0.0)


def test_settings_are_validated():
    repair = ANP()
    assert (repair.name, repair.steps, repair.iterations, repair.batch_size) == (
        "anp",
        0,
        2000,
        128,
    )
    assert (repair.anp_eps, repair.anp_steps, repair.anp_alpha) == (0.4, 1, 0.2)
    assert (repair.mask_lr, repair.mask_momentum, repair.delta_prune) == (0.2, 0.9, 0.02)
    assert repair.grid[0] == 0.0 and repair.grid[-1] == 0.9 and len(repair.grid) == 19
    assert dataclasses.replace(repair, grid=[0.2]).grid == (0.2,)
    for bad in (
        {"iterations": 0},
        {"anp_alpha": 1.5},
        {"anp_eps": -0.1},
        {"anp_steps": 0},
        {"prune_by": "rank"},
        {"grid": ()},
        {"grid": (1.5,)},
        {"delta_prune": -0.01},
        {"lr": 0.0},
    ):
        with pytest.raises(InvalidSettingError):
            ANP(**bad)
