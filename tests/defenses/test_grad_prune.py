"""Grad-Prune: the filter choice on hand-built gradients (argmax, never a pruned filter), the
stopping rule and the best round under known validation profiles, pruned filters exactly zero
through fine-tuning, the reference variant's two quirks (the next tensor in parameter order
on PreActResNet-18; BatchNorm statistics updated by the first batch of a round), one
compilation for any number of rounds, determinism, and clear errors.

No decision can read test data: the context holds the defender's tuning and validation
images only, and the same context gives the same plan (tested).

Models: the tiny test network (width 4: conv1 has 4 filters, conv2 8) on 8×8 synthetic
images; PreActResNet-18 at width 4, traced only (abstract shapes), for the parameter order.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_repair_context

from jaxbd.defenses import RepairContext, Variables, tune
from jaxbd.defenses import grad_prune as gp
from jaxbd.defenses.registry import hparams_config
from jaxbd.models import Classifier, preact_resnet18, tiny_cnn
from jaxbd.prune import conv_bn_pairs
from jaxbd.settings import InvalidSettingError
from jaxbd.train import dense_mask, init_variables

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
IMAGE = (8, 8, 3)
MODEL = tiny_cnn(width=4)
B = 8


def patch_trigger(key, images, labels):
    """A BadNets-like trigger: a white 2×2 corner, every label sent to 0."""
    del key
    return images.at[:, -2:, -2:, :].set(255), jnp.zeros_like(labels)


def _context(repair, *, trigger=patch_trigger, validate=None) -> RepairContext:
    return tiny_repair_context(
        repair, MODEL, mean=MEAN, std=STD, trigger=trigger, validate=validate
    )


@pytest.fixture(scope="module")
def model_variables():
    params, batch_stats = init_variables(MODEL, jax.random.key(3), IMAGE)
    return Variables(params=params, batch_stats=batch_stats, mask=dense_mask(params))


def _zero_filters(params) -> set[tuple[str, int]]:
    """The (conv, filter) whose kernel slice is all zero."""
    out = set()
    for conv in ("conv1", "conv2"):
        kernel = np.asarray(params[conv]["kernel"])
        for k in range(kernel.shape[-1]):
            if not np.any(kernel[..., k]):
                out.add((conv, k))
    return out


def _abstract_params(model):
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *IMAGE)), train=False)
    )
    return jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes["params"])


# -- the filter choice -------------------------------------------------------------------


def test_choose_filter_is_the_global_argmax_and_skips_pruned_filters():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, size=(3, 3, 2, 4)).astype(np.float32)
    b = rng.uniform(-1, 1, size=(1, 1, 4, 3)).astype(np.float32)
    b[..., 1] = 5.0  # the global maximum of mean |g|: conv b, filter 1 (flat index 4 + 1)
    a[..., 2] = -4.0  # the runner-up, negative: the score takes the absolute value
    expected = np.concatenate([np.abs(a).mean((0, 1, 2)), np.abs(b).mean((0, 1, 2))])
    scores = np.concatenate([np.asarray(s) for s in gp.filter_scores([a, b])])
    np.testing.assert_allclose(scores, expected, rtol=1e-6)

    keep = np.ones(7, np.float32)
    index, score = gp.choose_filter([a, b], keep)
    assert int(index) == 5 and float(score) == pytest.approx(5.0)
    keep[5] = 0.0  # pruned: never chosen again, whatever its gradient
    index, score = gp.choose_filter([a, b], keep)
    assert int(index) == 2 and float(score) == pytest.approx(4.0)
    keep[:] = 0.0
    assert float(gp.choose_filter([a, b], keep)[1]) == -np.inf

    # Ties go to the first filter in order; the flat index maps back to (conv, filter).
    ties = [np.ones((1, 1, 1, 2), np.float32), np.ones((1, 1, 1, 2), np.float32)]
    assert int(gp.choose_filter(ties, np.array([0, 1, 1, 1], np.float32))[0]) == 1
    pairs = conv_bn_pairs(MODEL, _abstract_params(MODEL), IMAGE)
    assert [gp.unflatten_filter(pairs, i) for i in (0, 3, 4, 11)] == [
        (0, 0),
        (0, 3),
        (1, 0),
        (1, 7),
    ]
    with pytest.raises(ValueError, match="not in"):
        gp.unflatten_filter(pairs, 12)
    np.testing.assert_array_equal(
        gp.keep_vector(pairs, [(("conv2",), 1), (("conv1",), 3)]),
        [1, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1, 1],
    )


def test_batch_rows_pad_with_zero_weight():
    rows, weights = gp.batch_rows(np.array([4, 2, 0, 1, 3]), 2)
    np.testing.assert_array_equal(rows, [[4, 2], [0, 1], [3, 0]])
    np.testing.assert_array_equal(weights, [[1, 1], [1, 1], [1, 0]])


# -- the stopping rule and the best round ------------------------------------------------------


def test_tracker_stops_on_alpha_and_keeps_the_best_round_within_it():
    t = gp.RoundTracker(0.9, 2.0, alpha=0.1, patience=10, max_rounds=100)
    profile = [(0.85, 1.5), (0.82, 1.2), (0.80, 1.4), (0.79, 0.1)]  # the last: 0.11 drop
    best = [t.update(a, loss) for a, loss in profile]
    assert best == [True, True, False, False]  # round 4's low loss is outside the budget
    assert t.stop_reason == "alpha" and t.rounds == 4
    assert t.best_round == 2 and t.best_loss == 1.2
    with pytest.raises(RuntimeError, match="stopped"):
        t.update(0.9, 0.0)


def test_tracker_patience_max_rounds_and_round_zero():
    t = gp.RoundTracker(0.9, 2.0, alpha=0.1, patience=3, max_rounds=100)
    for a, loss in [(0.9, 1.0), (0.9, 1.5), (0.9, 1.0), (0.9, 1.1)]:  # equal is no improvement
        t.update(a, loss)
    assert t.stop_reason == "patience" and t.best_round == 1
    # No round beats the unpruned model's loss: round 0 (nothing pruned) is kept.
    t = gp.RoundTracker(0.9, 1.0, alpha=0.1, patience=10, max_rounds=2)
    t.update(0.9, 1.5)
    t.update(0.9, 1.2)
    assert t.stop_reason == "max_rounds" and t.best_round == 0
    assert gp.RoundTracker(0.9, 1.0, 0.1, 10, 0).stop_reason == "max_rounds"


def test_plan_stops_on_alpha_under_a_stub_validation_profile(model_variables):
    # Validation accuracy falls 0.04 per pruned filter (read from the params it is given):
    # rounds 1 and 2 stay within α = 0.1, round 3 (0.12 below) stops the pruning.
    def validate(params, batch_stats):
        return 1.0 - 0.04 * len(_zero_filters(params))

    repair = gp.GradPrune(steps=2, batch_size=B, alpha=0.1, prune_patience=50)
    plan = repair.plan(_context(repair, validate=validate), model_variables)
    d = plan.details
    assert d["stop_reason"] == "alpha" and d["rounds"] == 3
    assert [r["val_accuracy"] for r in d["round_log"]] == pytest.approx([0.96, 0.92, 0.88])
    chosen = [(r["conv"], r["filter"]) for r in d["round_log"]]
    assert len(set(chosen)) == 3  # never a filter twice
    # The best round by validation unlearning loss among rounds 0..2 is what is returned.
    losses = [d["base_val_unlearning_loss"]] + [r["val_unlearning_loss"] for r in d["round_log"]]
    assert d["best_round"] == int(np.argmin(losses[:3]))
    assert _zero_filters(plan.variables.params) == set(chosen[: d["best_round"]])
    assert d["num_pruned"] == d["best_round"] == sum(d["pruned_per_layer"].values())
    assert d["filters_pruned"] == [
        {"conv": c, "filter": k, "round": i + 1}
        for i, (c, k) in enumerate(chosen[: d["best_round"]])
    ]


# -- pruned filters stay zero ------------------------------------------------------------------


def test_pruned_filters_output_exactly_zero_through_fine_tuning(model_variables):
    repair = gp.GradPrune(steps=4, batch_size=B, alpha=1.0, prune_patience=50, max_rounds=3)
    ctx = _context(repair, validate=lambda params, batch_stats: 0.5)  # never stops on α
    plan = repair.plan(ctx, model_variables)
    d = plan.details
    assert d["stop_reason"] == "max_rounds" and d["rounds"] == 3
    # The unlearning loss of this model falls as its top filters go: rounds are kept.
    assert d["best_round"] >= 1
    pruned = {(f["conv"], f["filter"]) for f in d["filters_pruned"]}

    # The fine-tuning set: the tuning images and their triggered copies, true labels.
    tune_set = ctx.defender.tune
    assert len(plan.data) == 2 * len(tune_set) == d["tuning_examples"]
    labels = np.asarray(plan.data.labels)
    np.testing.assert_array_equal(labels, np.concatenate([tune_set.labels, tune_set.labels]))
    triggered = np.asarray(plan.data.images)[len(tune_set) :]
    assert np.all(triggered[:, -2:, -2:, :] == 255)

    result = tune(ctx, plan, eval_every=2, delta=1.0)
    assert result.steps == 4 and result.returned_step == 4
    v = result.variables
    assert _zero_filters(v.params) >= pruned
    for conv, k in pruned:
        bn = "bn" + conv[-1]  # the tiny network's own BatchNorms
        assert v.params[bn]["scale"][k] == 0 and v.params[bn]["bias"][k] == 0
    _, state = MODEL.apply(
        {"params": v.params, "batch_stats": v.batch_stats},
        (tune_set.images.astype(np.float32) / 255 - 0.5) / 0.25,
        train=False,
        mutable=["intermediates"],
    )
    for conv, k in pruned:
        out = np.asarray(state["intermediates"]["stage" + conv[-1]][0])
        assert np.all(out[..., k] == 0.0)  # exactly zero, not merely small
        assert np.any(out[..., [c for c in range(out.shape[-1]) if c != k]] != 0)


# -- the reference variant -----------------------------------------------------------------


def test_parameter_order_is_creation_order():
    order = gp.parameter_order(preact_resnet18(width=4), IMAGE)
    names = ["/".join(p) for p in order]
    assert names[:4] == [
        "stem_conv/kernel",
        "stage1_block1/bn1/scale",
        "stage1_block1/bn1/bias",
        "stage1_block1/conv1/kernel",
    ]
    assert names[-2:] == ["head/kernel", "head/bias"]
    i = names.index("stage2_block1/shortcut_conv/kernel")
    assert names[i + 1] == "stage2_block1/conv1/kernel"
    assert gp.next_tensor(order, ("stage1_block1", "conv1")) == ("stage1_block1", "bn2", "scale")


def test_reference_variant_zeroes_the_next_tensor_in_parameter_order():
    model = preact_resnet18(width=4)  # stage 4: 32 filters; head: [32, 10]
    params = _abstract_params(model)
    pairs = conv_bn_pairs(model, params, IMAGE)
    order = gp.parameter_order(model, IMAGE)
    pruned = [
        (("stage1_block1", "conv2"), 2),  # -> the next block's bn1 (a BN of a residual sum)
        (("stage2_block1", "shortcut_conv"), 1),  # -> the same block's conv1
        (("stage4_block2", "conv2"), 3),  # the last conv -> the dense head, class 3
        (("stage4_block2", "conv2"), 12),  # ... no class 12: nothing more (PyTorch: IndexError)
        (("stage1_block1", "conv1"), 0),  # -> its own BN's scale, not its shift
    ]
    mask, hits = gp.pruning_mask(params, pairs, pruned, variant="reference", order=order)
    assert [h["tensor"] for h in hits] == [
        "stage1_block2/bn1/scale",
        "stage2_block1/conv1/kernel",
        "head/kernel",
        "head/kernel",
        "stage1_block1/bn2/scale",
    ]
    assert [h["in_range"] for h in hits] == [True, True, True, False, True]

    expected = jax.tree.map(lambda p: np.ones(p.shape, np.float32), params)
    expected["stage1_block1"]["conv2"]["kernel"][..., 2] = 0
    expected["stage1_block2"]["bn1"]["scale"][2] = 0
    expected["stage2_block1"]["shortcut_conv"]["kernel"][..., 1] = 0
    expected["stage2_block1"]["conv1"]["kernel"][..., 1] = 0
    expected["stage4_block2"]["conv2"]["kernel"][..., [3, 12]] = 0
    expected["head"]["kernel"][:, 3] = 0
    expected["stage1_block1"]["conv1"]["kernel"][..., 0] = 0
    expected["stage1_block1"]["bn2"]["scale"][0] = 0
    jax.tree.map(np.testing.assert_array_equal, mask, expected)

    # The standard variant: the kernel slices, and the own BN (scale and shift) of conv1 only
    # (conv2 and the shortcut feed a residual sum: no BN of their own).
    mask, hits = gp.pruning_mask(params, pairs, pruned)
    assert [h["bn"] for h in hits] == [None, None, None, None, "stage1_block1/bn2"]
    assert np.all(np.asarray(mask["head"]["kernel"]) == 1)
    assert np.all(np.asarray(mask["stage1_block2"]["bn1"]["scale"]) == 1)
    assert np.asarray(mask["stage1_block1"]["bn2"]["bias"])[0] == 0
    assert np.asarray(mask["stage2_block1"]["conv1"]["kernel"])[..., 1].all()
    with pytest.raises(ValueError, match="parameter order"):
        gp.pruning_mask(params, pairs, pruned, variant="reference")
    with pytest.raises(ValueError, match="variant"):
        gp.pruning_mask(params, pairs, pruned, variant="torch")


def test_reference_variant_updates_batch_stats_on_the_first_batch_only(model_variables):
    v = model_variables
    pairs = conv_bn_pairs(MODEL, v.params, IMAGE)
    convs = tuple(p.conv for p in pairs)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (12, *IMAGE), np.uint8))
    labels = jnp.arange(12, dtype=jnp.int32) % 10
    rows, weights = gp.batch_rows(np.array([5, 3, 7, 0, 1, 2, 4, 6, 8, 9, 10, 11]), 4)
    mask = dense_mask(v.params)
    classifier = Classifier(MODEL, v.params, v.batch_stats, mean=MEAN, std=STD, mask=mask)

    _, _, same = gp.unlearning_gradients(classifier, convs, images, labels, rows, weights)
    jax.tree.map(np.testing.assert_array_equal, same, v.batch_stats)

    sums, _, updated = gp.unlearning_gradients(
        classifier, convs, images, labels, rows, weights, first_batch_train=True
    )
    x = (images[rows[0]].astype(jnp.float32) / 255 - 0.5) / 0.25
    _, expected = MODEL.apply(
        {"params": v.params, "batch_stats": v.batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        updated,
        expected["batch_stats"],
    )
    assert not np.allclose(updated["bn1"]["mean"], v.batch_stats["bn1"]["mean"])
    assert [s.shape for s in sums] == [(3, 3, 3, 4), (3, 3, 4, 8)]


def test_reference_plan_zeroes_only_the_bn_scale_and_keeps_updated_stats(model_variables):
    repair = gp.GradPrune(
        steps=0, batch_size=B, alpha=1.0, prune_patience=50, max_rounds=2, variant="reference"
    )
    params = jax.tree.map(jnp.array, model_variables.params)
    for bn in ("bn1", "bn2"):  # initialized at 0: give the shifts a value to keep
        params[bn]["bias"] = params[bn]["bias"] + 0.1
    variables = dataclasses.replace(model_variables, params=params)
    plan = repair.plan(_context(repair, validate=lambda p, s: 0.5), variables)
    d = plan.details
    assert d["variant"] == "reference" and d["rounds"] == 2
    for r in d["round_log"]:
        assert r["tensor"] == "bn" + r["conv"][-1] + "/scale" and r["in_range"]
    v = plan.variables
    for f in d["filters_pruned"]:
        bn = v.params["bn" + f["conv"][-1]]
        assert bn["scale"][f["filter"]] == 0 and bn["bias"][f["filter"]] != 0
    # The statistics moved (the first batch of every round ran in training mode) unless
    # round 0 is the one returned.
    moved = not np.allclose(
        v.batch_stats["bn1"]["mean"], model_variables.batch_stats["bn1"]["mean"]
    )
    assert moved == (d["best_round"] > 0)


# -- compilation, determinism, errors ----------------------------------------------------------


def test_rounds_compile_once_and_the_plan_is_deterministic(model_variables):
    repair = gp.GradPrune(steps=0, batch_size=B, alpha=1.0, prune_patience=50, max_rounds=3)
    ctx = _context(repair, validate=lambda p, s: 0.5)
    before = dict(gp.TRACES)
    first = repair.plan(ctx, model_variables)
    traced = dict(gp.TRACES)
    # Three rounds (more pruned filters each) trace each program at most once ...
    assert all(traced[k] - before.get(k, 0) <= 1 for k in ("grad", "choose", "loss"))
    assert traced["grad"] >= 1 and traced["choose"] >= 1 and traced["loss"] >= 1
    again = repair.plan(ctx, model_variables)
    assert dict(gp.TRACES) == traced  # ... and three more rounds trace nothing
    assert first.details == again.details
    jax.tree.map(np.testing.assert_array_equal, first.variables.mask, again.variables.mask)
    jax.tree.map(np.testing.assert_array_equal, first.variables.params, again.variables.params)


def test_missing_trigger_and_bad_settings_are_clear_errors(model_variables):
    repair = gp.GradPrune(batch_size=B)
    assert repair.needs_trigger and repair.name == "grad_prune"
    with pytest.raises(ValueError, match="trigger_knowledge"):
        repair.plan(_context(repair, trigger=None), model_variables)

    def bad_trigger(key, images, labels):
        return images.astype(jnp.float32), labels

    with pytest.raises(ValueError, match="uint8"):
        repair.plan(_context(repair, trigger=bad_trigger), model_variables)
    for field, value in [
        ("alpha", 1.5),
        ("prune_patience", 0),
        ("max_rounds", -1),
        ("variant", "torch"),
        ("lr", 0.0),
    ]:
        with pytest.raises(InvalidSettingError, match=field):
            gp.GradPrune(**{field: value})
    hp = hparams_config(gp.GradPrune)
    assert hp.alpha == 0.1 and hp.prune_patience == 10 and hp.variant == "standard"
    assert dataclasses.asdict(gp.GradPrune())["max_rounds"] == 200
