"""Fine-Pruning: the pure pieces against NumPy, exactly the k least activated channels pruned
(and nothing else), the stopping rule keeping the last rate within the budget, pruned
channels staying zero through fine-tuning, determinism, and clear errors.

No decision can read test data: a `RepairContext` holds the defender's tuning and validation
images only (there is no test set in it to read), and the plan is a function of the context
and the model — the same context gives the same plan (tested).

Models: the tiny test network (width 4: D = 8 features) on 8×8 synthetic images, and for the
stopping rule a stub context with hand-made features and a hand-made validation curve.
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_repair_context

from jaxbd.defenses import RepairContext, Variables, tune
from jaxbd.defenses.fine_pruning import (
    FinePruning,
    candidate_counts,
    channel_activations,
    find_head,
    prune_channels_mask,
)
from jaxbd.models import tiny_cnn
from jaxbd.settings import InvalidSettingError
from jaxbd.train import dense_mask, init_variables

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
B = 8
MODEL = tiny_cnn(width=4)  # features: D = 2 · 4 = 8
D, C = 8, 10


# -- fixtures ----------------------------------------------------------------------------


def _context(repair: FinePruning, key=0) -> RepairContext:
    return tiny_repair_context(repair, MODEL, mean=MEAN, std=STD, key=key)


@pytest.fixture(scope="module")
def model_variables():
    params, batch_stats = init_variables(MODEL, jax.random.key(3), (8, 8, 3))
    return Variables(params=params, batch_stats=batch_stats, mask=dense_mask(params))


class StubContext(RepairContext):
    """A context whose features are given and whose validation accuracy is a function of the
    number of pruned head rows (the stopping rule under a known curve)."""

    def __init__(self, features, accuracy_at, num_images):
        images = np.zeros((num_images, 4, 4, 3), np.uint8)
        defender = type("Defender", (), {"tune": type("Tune", (), {"images": images})()})()
        self.feature_matrix = np.asarray(features, np.float32)
        self.accuracy_at = accuracy_at
        self.validated = []

        def validate(params, batch_stats):
            head = params["head"] if "head" in params else params["classifier"]
            pruned = int(np.sum(np.all(np.asarray(head["kernel"]) == 0, axis=1)))
            self.validated.append(pruned)
            return self.accuracy_at(pruned)

        super().__init__(
            trainer=None,
            defender=defender,
            tune_data=None,
            key=jax.random.key(0),
            validate=validate,
            num_classes=3,
        )

    def features(self, params, batch_stats, images):
        f = self.feature_matrix[: len(images)]
        return jnp.zeros((len(images), 3)), jnp.asarray(f)


def _stub_variables(d):
    params = {
        "conv": {"kernel": jnp.ones((3, 3, 3, 4))},
        "head": {"kernel": jnp.ones((d, 3)), "bias": jnp.ones((3,))},
    }
    return Variables(params=params, batch_stats={}, mask=dense_mask(params))


def _known_features(d, n=6, seed=0):
    """f32[n, d] features whose channel means are a random permutation of 1..d (distinct)."""
    rng = np.random.default_rng(seed)
    means = rng.permutation(d).astype(np.float32) + 1.0
    noise = rng.normal(size=(n, d)).astype(np.float32)
    noise -= noise.mean(axis=0)  # zero-mean per channel: the means stay exactly `means`
    return means + 0.1 * noise, means


# -- pure pieces -------------------------------------------------------------------------


def test_channel_activations_is_the_per_channel_mean():
    f = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(channel_activations(f)), f.mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match="f32\\[N, D\\]"):
        channel_activations(np.zeros((3, 2, 2)))


def test_prune_channels_mask_zeroes_exactly_those_head_rows(model_variables):
    params = model_variables.params
    mask = prune_channels_mask(params, np.array([5, 1, 6]))
    head = np.asarray(mask["head"]["kernel"])
    assert head.shape == (D, C) and head.dtype == np.float32
    np.testing.assert_array_equal(head[[1, 5, 6]], 0.0)
    np.testing.assert_array_equal(np.delete(head, [1, 5, 6], axis=0), 1.0)
    for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]:
        if path[:2] != (jax.tree_util.DictKey("head"), jax.tree_util.DictKey("kernel")):
            assert np.all(np.asarray(leaf) == 1.0), path
    with pytest.raises(ValueError, match="in \\[0, 8\\)"):
        prune_channels_mask(params, [8])


def test_candidate_counts():
    assert candidate_counts(20, 0.1, 0.5) == [2, 4, 6, 8, 10]
    counts = candidate_counts(512, 0.05, 0.96)
    assert counts[0] == 26 and counts[-1] == 492  # round(0.96 · 512) = 492 reachable
    assert all(a < b for a, b in itertools.pairwise(counts))
    small = candidate_counts(16, 0.05, 0.96)
    assert small[0] == 1 and small[-1] == 15 and len(set(small)) == len(small)
    assert candidate_counts(1, 0.05, 0.96) == []


def test_find_head_by_name_or_structure():
    params = {
        "conv": {"kernel": jnp.ones((3, 3, 3, 8))},
        "classifier": {"kernel": jnp.ones((8, 10)), "bias": jnp.ones(10)},
        "aux": {"kernel": jnp.ones((4, 10))},
    }
    assert find_head(params, 8, head=None) == "classifier"
    assert find_head(params, 8, head="classifier") == "classifier"
    with pytest.raises(ValueError, match=r"no dense head 'head'.*classifier \[8, 10\]"):
        find_head(params, 8)
    with pytest.raises(ValueError, match="4-dimensional"):
        find_head(params, 4, head="classifier")
    with pytest.raises(ValueError, match="no dense kernel with input width 16"):
        find_head(params, 16, head=None)
    params["other"] = {"kernel": jnp.ones((8, 3))}
    with pytest.raises(ValueError, match="2 dense kernels with input width 8"):
        find_head(params, 8, head=None)


def test_settings_are_validated():
    repair = FinePruning()
    assert (repair.name, repair.steps, repair.lr, repair.momentum) == (
        "fine_pruning",
        1000,
        1e-3,
        0.9,
    )
    assert (repair.batches, repair.prune_step, repair.max_rate, repair.delta_prune) == (
        10,
        0.05,
        0.96,
        0.05,
    )
    for bad in ({"max_rate": 1.0}, {"prune_step": 0.0}, {"delta_prune": -0.1}, {"batches": 0}):
        with pytest.raises(InvalidSettingError):
            FinePruning(**bad)
    with pytest.raises(InvalidSettingError):
        FinePruning(lr=0.0)  # the shared optimizer checks


# -- the plan ----------------------------------------------------------------------------


def test_prunes_exactly_the_k_least_activated_channels_on_a_known_model():
    d = 20
    features, means = _known_features(d)
    ctx = StubContext(features, lambda pruned: 0.9, num_images=6)
    plan = FinePruning(prune_step=0.1, max_rate=0.5, batch_size=2, batches=3).plan(
        ctx, _stub_variables(d)
    )
    expected = np.sort(np.argsort(means, kind="stable")[:10])
    assert plan.details["channels_pruned"] == expected.tolist()
    assert plan.details["num_channels_pruned"] == 10  # exactly k = 0.5 · 20, not k − 1
    assert plan.details["stopped_by"] == "max_rate"
    head = np.asarray(plan.variables.mask["head"]["kernel"])
    np.testing.assert_array_equal(np.flatnonzero(np.all(head == 0, axis=1)), expected)
    assert np.all(np.asarray(plan.variables.params["head"]["kernel"])[expected] == 0)
    others = np.setdiff1d(np.arange(d), expected)
    assert np.all(np.asarray(plan.variables.params["head"]["kernel"])[others] == 1)
    assert np.all(np.asarray(plan.variables.mask["conv"]["kernel"]) == 1)


def test_stopping_rule_keeps_the_last_rate_within_budget():
    d = 20
    features, means = _known_features(d, seed=1)
    # Validation accuracy 0.9 unpruned, exactly at the budget edge (0.85) at 6 channels, and
    # far below from 8 on: the 6-channel model is returned, not the over-pruned 8-channel one.
    curve = {0: 0.9, 2: 0.9, 4: 0.88, 6: 0.85, 8: 0.5, 10: 0.9}
    ctx = StubContext(features, lambda pruned: curve[pruned], num_images=6)
    plan = FinePruning(prune_step=0.1, max_rate=0.5, delta_prune=0.05, batch_size=6).plan(
        ctx, _stub_variables(d)
    )
    details = plan.details
    assert details["num_channels_pruned"] == 6 and details["pruning_rate"] == 0.3
    assert details["channels_pruned"] == np.sort(np.argsort(means, kind="stable")[:6]).tolist()
    assert details["stopped_by"] == "delta_prune"
    assert [c["num_channels"] for c in details["candidates"]] == [2, 4, 6, 8]
    assert [c["within_budget"] for c in details["candidates"]] == [True, True, True, False]
    assert [c["val_accuracy"] for c in details["candidates"]] == [0.9, 0.88, 0.85, 0.5]
    assert details["base_val_accuracy"] == 0.9
    # Pruning stops at the first candidate outside the budget (10 is never evaluated).
    assert ctx.validated == [0, 2, 4, 6, 8]
    head = np.asarray(plan.variables.mask["head"]["kernel"])
    assert int(np.sum(np.all(head == 0, axis=1))) == 6


def test_nothing_pruned_when_the_first_candidate_breaks_the_budget():
    features, _ = _known_features(20, seed=2)
    ctx = StubContext(features, lambda pruned: 0.9 if pruned == 0 else 0.1, num_images=6)
    plan = FinePruning(prune_step=0.1, max_rate=0.5, batch_size=6).plan(ctx, _stub_variables(20))
    assert plan.details["num_channels_pruned"] == 0 and plan.details["channels_pruned"] == []
    assert all(np.all(np.asarray(m) == 1) for m in jax.tree.leaves(plan.variables.mask))


def test_an_existing_mask_is_kept_and_combined():
    d = 20
    features, means = _known_features(d, seed=3)
    variables = _stub_variables(d)
    old = jax.tree.map(lambda m: m, variables.mask)
    old["conv"]["kernel"] = old["conv"]["kernel"].at[0].set(0.0)
    old["head"]["kernel"] = old["head"]["kernel"].at[:, 0].set(0.0)  # an output column
    variables = dataclasses.replace(variables, mask=old)
    ctx = StubContext(features, lambda pruned: 0.9, num_images=6)
    plan = FinePruning(prune_step=0.1, max_rate=0.2, batch_size=6).plan(ctx, variables)
    rows = np.argsort(means, kind="stable")[:4]
    expected = np.asarray(old["head"]["kernel"]).copy()
    expected[rows] = 0.0
    np.testing.assert_array_equal(np.asarray(plan.variables.mask["head"]["kernel"]), expected)
    np.testing.assert_array_equal(
        np.asarray(plan.variables.mask["conv"]["kernel"]), np.asarray(old["conv"]["kernel"])
    )


def test_ranking_on_the_tiny_cnn_matches_numpy_argsort(model_variables):
    repair = FinePruning(prune_step=0.25, max_rate=0.5, delta_prune=1.0, batch_size=B)
    ctx = _context(repair)
    # 10 batches of 8 = 80 >= the 30 tuning images: the ranking averages over all of them.
    _, features = ctx.trainer.predict_variables(
        model_variables.params, model_variables.batch_stats, ctx.defender.tune.images
    )
    means = np.asarray(features).mean(axis=0)
    plan = repair.plan(ctx, model_variables)
    assert plan.details["sampled_images"] == len(ctx.defender.tune.images) == 30
    assert plan.details["num_channels"] == D and plan.details["head"] == "head"
    assert plan.details["channels_pruned"] == np.sort(np.argsort(means, kind="stable")[:4]).tolist()
    head = np.asarray(plan.variables.mask["head"]["kernel"])
    assert (
        sorted(np.flatnonzero(np.all(head == 0, axis=1)).tolist())
        == plan.details["channels_pruned"]
    )
    assert int(np.sum(head == 0)) == 4 * C  # those rows and no other weight
    # Fewer sampling batches than the tuning set: a sample of batches · batch_size images.
    sampled = dataclasses.replace(repair, batches=2).plan(ctx, model_variables)
    assert sampled.details["sampled_images"] == 16


def test_the_plan_is_a_function_of_the_context(model_variables):
    repair = FinePruning(prune_step=0.25, max_rate=0.75, delta_prune=0.2, batch_size=B, batches=2)
    ctx = _context(repair)
    first, second = repair.plan(ctx, model_variables), repair.plan(ctx, model_variables)
    assert first.details == second.details
    for a, b in zip(
        jax.tree.leaves(first.variables), jax.tree.leaves(second.variables), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_pruned_channels_stay_zero_through_fine_tuning(model_variables):
    repair = FinePruning(
        steps=6, lr=0.5, momentum=0.9, prune_step=0.25, max_rate=0.5, delta_prune=1.0, batch_size=B
    )
    ctx = _context(repair)
    plan = repair.plan(ctx, model_variables)
    channels = np.asarray(plan.details["channels_pruned"])
    assert channels.size == 4
    momentum_rows = []

    def on_eval(progress):
        # The momentum buffer of the head kernel: a nonzero row would move the weight again.
        trees = [
            leaf
            for leaf in jax.tree.leaves(
                progress.state.opt_state, is_leaf=lambda x: isinstance(x, dict)
            )
            if isinstance(leaf, dict)
        ]
        momentum_rows.append(np.asarray(trees[0]["head"]["kernel"])[channels])

    result = tune(ctx, plan, eval_every=3, delta=1.0, on_eval=on_eval)
    assert result.steps == 6 and result.returned_step == 6
    kernel = np.asarray(result.variables.params["head"]["kernel"])
    assert np.all(kernel[channels] == 0.0)
    assert np.all(np.asarray(result.variables.mask["head"]["kernel"])[channels] == 0.0)
    assert len(momentum_rows) == 3 and all(np.all(rows == 0.0) for rows in momentum_rows)
    # The other rows did train (so the zeros are the mask's doing, not a frozen model).
    start = np.asarray(plan.variables.params["head"]["kernel"])
    others = np.setdiff1d(np.arange(D), channels)
    assert np.any(kernel[others] != start[others])


def test_a_model_without_a_recognizable_head_is_a_clear_error():
    features, _ = _known_features(20)
    variables = _stub_variables(20)
    params = {"conv": variables.params["conv"], "classifier": variables.params["head"]}
    variables = Variables(params=params, batch_stats={}, mask=dense_mask(params))
    ctx = StubContext(features, lambda pruned: 0.9, num_images=6)
    with pytest.raises(ValueError, match="no dense head 'head'"):
        FinePruning(batch_size=6).plan(ctx, variables)
    # Found structurally with head=None (the one dense kernel of input width D = 20).
    plan = FinePruning(batch_size=6, head=None, max_rate=0.1, prune_step=0.1).plan(ctx, variables)
    assert plan.details["head"] == "classifier" and plan.details["num_channels_pruned"] == 2
    # Features of another width than the head's inputs.
    ctx = StubContext(features[:, :12], lambda pruned: 0.9, num_images=6)
    with pytest.raises(ValueError, match="12-dimensional"):
        FinePruning(batch_size=6).plan(ctx, _stub_variables(20))
