"""docs/metrics.md's metrics: hand-computed values, NaN conventions, shape errors, invariants."""

import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxbd import metrics

# Fixed array sizes keep the eager jnp ops to one compilation per shape.
M = 12
FAST = settings(max_examples=50, deadline=None)

labels_m = hnp.arrays(np.int32, M, elements=st.integers(0, 3))
bools_m = hnp.arrays(np.bool_, M)
fractions = st.floats(0.0, 1.0)


def _f(x):
    return float(x)


# --- hand-computed examples ---------------------------------------------------------------


def test_clean_accuracy():
    assert _f(metrics.clean_accuracy([0, 1, 2, 3], [0, 1, 0, 0])) == 0.5
    assert _f(metrics.clean_accuracy(np.array([1]), np.array([1]))) == 1.0
    assert math.isnan(_f(metrics.clean_accuracy(np.zeros(0, int), np.zeros(0, int))))


def test_attack_success_rate_excludes_target_class_images():
    true = np.array([0, 0, 1, 2, 3, 4])
    target = np.zeros(6, int)
    pred = np.array([0, 5, 0, 0, 3, 1])
    # Eligible: indices 2..5 (true != 0); predicted target at 2, 3 → 2/4.
    assert _f(metrics.attack_success_rate(pred, target, true)) == 0.5
    # The all-images variant counts indices 0, 2, 3 → 3/6.
    assert _f(metrics.asr_all_images(pred, target)) == 0.5
    assert _f(metrics.asr_all_images([0, 0, 1], 0)) == pytest.approx(2 / 3)
    # Robust accuracy: eligible predicted as true label — index 4 only → 1/4.
    assert _f(metrics.robust_accuracy(pred, target, true)) == 0.25
    # A scalar target is broadcast.
    assert _f(metrics.attack_success_rate(pred, 0, true)) == 0.5
    assert _f(metrics.robust_accuracy(pred, 0, true)) == 0.25


def test_all_to_all_uses_per_example_targets():
    true = np.array([0, 1, 2, 3])
    target = (true + 1) % 4
    pred = np.array([1, 2, 0, 3])
    assert _f(metrics.attack_success_rate(pred, target, true)) == 0.5
    assert _f(metrics.robust_accuracy(pred, target, true)) == 0.25


def test_empty_eligible_set_is_nan():
    true = np.array([2, 2, 2])
    assert math.isnan(_f(metrics.attack_success_rate([2, 2, 1], 2, true)))
    assert math.isnan(_f(metrics.robust_accuracy([2, 2, 1], 2, true)))


def test_poison_retention():
    is_poison = np.array([True, False, True, True, False])
    assert _f(metrics.poison_retention(is_poison, [0, 1])) == pytest.approx(1 / 3)
    assert _f(metrics.poison_retention(is_poison, np.array([2, 3, 0]))) == 1.0
    assert _f(metrics.poison_retention(is_poison, [1, 4])) == 0.0
    assert _f(metrics.poison_retention(is_poison, [0, 0, 0])) == pytest.approx(1 / 3)  # repeats
    assert _f(metrics.poison_retention(is_poison, np.array([]))) == 0.0
    assert math.isnan(_f(metrics.poison_retention(np.zeros(5, bool), [0, 1])))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        metrics.poison_retention(is_poison, [0, 5])
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        metrics.poison_retention(is_poison, [-1])


def test_defense_effectiveness_rating():
    # ASR 0.98 → 0.10 (drop 0.88), CDA 0.94 → 0.90 (drop 0.04): (0.88 − 0.04 + 1) / 2 = 0.92.
    assert _f(metrics.defense_effectiveness_rating(0.94, 0.90, 0.98, 0.10)) == pytest.approx(0.92)
    # ASR rising and CDA improving are both clipped to zero.
    assert _f(metrics.defense_effectiveness_rating(0.90, 0.95, 0.5, 0.7)) == 0.5
    assert _f(metrics.defense_effectiveness_rating(0.9, 0.9, 1.0, 0.0)) == 1.0
    assert _f(metrics.defense_effectiveness_rating(1.0, 0.0, 0.3, 0.3)) == 0.0
    seeds = metrics.defense_effectiveness_rating(
        np.array([0.9, 0.9]), np.array([0.9, 0.8]), 1.0, np.array([0.0, 0.0])
    )
    np.testing.assert_allclose(seeds, [1.0, 0.95])


def test_robust_improvement_rate():
    # RA 0.10 → 0.70 (gain 0.6), clean 0.94 → 0.90 (drop 0.04): (0.6 − 0.04 + 1) / 2 = 0.78.
    assert metrics.robust_improvement_rate(0.94, 0.90, 0.10, 0.70) == pytest.approx(0.78)
    # An RA loss and a clean-accuracy gain are both clipped to zero; floats on the host.
    assert metrics.robust_improvement_rate(0.90, 0.95, 0.7, 0.5) == 0.5
    assert metrics.robust_improvement_rate(0.9, 0.9, 0.0, 1.0) == 1.0
    assert metrics.robust_improvement_rate(1.0, 0.0, 0.3, 0.3) == 0.0
    assert type(metrics.robust_improvement_rate(0.9, 0.8, 0.1, 0.2)) is float


def test_metrics_imports_nothing_above_the_foundations():
    # A foundation module: jaxbd.metrics reaches no jaxbd package but the layer-0 ones,
    # not even inside a function.
    import ast

    with open(metrics.__file__) as f:
        tree = ast.parse(f.read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    layer0 = {"jaxbd.settings", "jaxbd.rng", "jaxbd.types", "jaxbd.files"}
    assert {m for m in imported if m.split(".")[0] == "jaxbd"} <= layer0


def test_roc_auc():
    assert _f(metrics.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])) == 0.75
    assert _f(metrics.roc_auc([1, 2, 2, 3], [False, True, False, True])) == 0.875  # a tie
    assert _f(metrics.roc_auc([3, 3, 3], [0, 1, 1])) == 0.5
    assert _f(metrics.roc_auc([5, 1], [1, 0])) == 1.0
    assert _f(metrics.roc_auc([5, 1], [0, 1])) == 0.0
    assert math.isnan(_f(metrics.roc_auc([1, 2], [1, 1])))
    assert math.isnan(_f(metrics.roc_auc([1, 2], [0, 0])))


def test_aggregate_and_format():
    stats = metrics.aggregate([94.0, 94.5, 93.5])
    assert stats == {"mean": 94.0, "std": pytest.approx(0.5), "n": 3}
    assert metrics.format_mean_std([94.0, 94.5, 93.5]) == "94.00 ± 0.50 (n=3)"
    assert metrics.format_mean_std(np.array([0.94123, 0.9418]) * 100, 1) == "94.2 ± 0.0 (n=2)"
    one = metrics.aggregate([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["std"]) and one["n"] == 1
    assert metrics.format_mean_std([94.123]) == "94.12 (n=1)"
    none = metrics.aggregate([])
    assert math.isnan(none["mean"]) and math.isnan(none["std"]) and none["n"] == 0
    assert metrics.format_mean_std([]) == "nan (n=0)"


def test_format_matches_the_spec_example():
    values = [94.12 + d for d in (-0.31, 0.0, 0.31)]
    stats = metrics.aggregate(values)
    assert metrics.format_mean_std(values) == f"94.12 ± {stats['std']:.2f} (n=3)"


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        (metrics.clean_accuracy, ([0, 1], [0, 1, 2])),
        (metrics.attack_success_rate, ([0, 1], [0, 0], [1, 1, 1])),
        (metrics.asr_all_images, ([0, 1], [0, 0, 0])),
        (metrics.robust_accuracy, ([0, 1, 2], [0, 0], [1, 1, 1])),
        (metrics.roc_auc, ([0.1, 0.2], [True])),
        (metrics.clean_accuracy, (np.zeros((4, 10)), np.zeros(4))),  # logits, not labels
    ],
)
def test_shape_mismatch_is_a_clear_error(fn, args):
    with pytest.raises(ValueError, match="shapes must match"):
        fn(*args)


def test_metrics_run_under_jit():
    pred, target, true = np.array([0, 1, 0, 2]), np.zeros(4, int), np.array([0, 1, 1, 2])
    jitted = jax.jit(metrics.attack_success_rate)
    assert _f(jitted(pred, target, true)) == _f(metrics.attack_success_rate(pred, target, true))
    retention = jax.jit(metrics.poison_retention)(np.array([1, 0, 1], bool), np.array([0, 1]))
    assert _f(retention) == 0.5
    auc = jax.jit(metrics.roc_auc)(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert _f(auc) == 0.75


# --- invariants (hypothesis) --------------------------------------------------------------


@FAST
@given(pred=labels_m, target=labels_m, true=labels_m)
def test_asr_and_ra_are_fractions_summing_to_at_most_one(pred, target, true):
    asr = _f(metrics.attack_success_rate(pred, target, true))
    ra = _f(metrics.robust_accuracy(pred, target, true))
    if not np.any(target != true):
        assert math.isnan(asr) and math.isnan(ra)
        return
    assert 0.0 <= asr <= 1.0 and 0.0 <= ra <= 1.0
    assert asr + ra <= 1.0 + 1e-6


@FAST
@given(pred=labels_m, true=labels_m, other=labels_m, target=st.integers(0, 3))
def test_asr_ignores_target_class_images(pred, true, other, target):
    # Whatever the model predicts on images that already belong to the target class, the
    # ASR (and RA) stay the same.
    changed = np.where(true == target, other, pred)
    for fn in (metrics.attack_success_rate, metrics.robust_accuracy):
        a, b = _f(fn(pred, target, true)), _f(fn(changed, target, true))
        assert a == b or (math.isnan(a) and math.isnan(b))


@FAST
@given(pred=labels_m, true=hnp.arrays(np.int32, M, elements=st.integers(1, 3)))
def test_asr_all_images_equals_asr_without_target_class_images(pred, true):
    target = 0  # no true label is 0
    assert _f(metrics.asr_all_images(pred, target)) == pytest.approx(
        _f(metrics.attack_success_rate(pred, target, true))
    )


@FAST
@given(is_poison=bools_m, small=bools_m, extra=bools_m)
def test_retention_bounds_and_monotonicity(is_poison, small, extra):
    full = metrics.poison_retention(is_poison, np.arange(M))
    empty = metrics.poison_retention(is_poison, np.zeros(0, np.int32))
    a = _f(metrics.poison_retention(is_poison, np.flatnonzero(small)))
    b = _f(metrics.poison_retention(is_poison, np.flatnonzero(small | extra)))
    if not is_poison.any():
        assert math.isnan(_f(full)) and math.isnan(_f(empty)) and math.isnan(a)
        return
    assert _f(full) == 1.0 and _f(empty) == 0.0
    assert 0.0 <= a <= b <= 1.0


@FAST
@given(cda_b=fractions, cda_a=fractions, asr_b=fractions, asr_a=fractions)
def test_der_bounds(cda_b, cda_a, asr_b, asr_a):
    der = _f(metrics.defense_effectiveness_rating(cda_b, cda_a, asr_b, asr_a))
    assert -1e-6 <= der <= 1.0 + 1e-6
    assert _f(metrics.defense_effectiveness_rating(cda_b, cda_b, asr_b, asr_b)) == 0.5


@FAST
@given(
    scores=hnp.arrays(np.float32, M, elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, -3.0])),
    positive=bools_m,
)
def test_roc_auc_matches_pairwise_count(scores, positive):
    pos, neg = scores[positive], scores[~positive]
    auc = _f(metrics.roc_auc(scores, positive))
    if pos.size == 0 or neg.size == 0:
        assert math.isnan(auc)
        return
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auc == pytest.approx(wins / (pos.size * neg.size), abs=1e-6)


@FAST
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=8))
def test_aggregate_matches_numpy(values):
    stats = metrics.aggregate(values)
    assert stats["n"] == len(values)
    assert stats["mean"] == pytest.approx(np.mean(values), abs=1e-9)
    assert stats["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-9)


# --- DER input checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        (80, 78, 95, 10),  # percentages: used to return 42.0
        (0.9, 0.8, 1.2, 0.1),
        (0.9, -0.1, 0.9, 0.1),
        (np.array([0.9, 90.0]), 0.8, 0.9, 0.1),
    ],
)
def test_der_rejects_values_that_are_not_fractions(args):
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\]"):
        metrics.defense_effectiveness_rating(*args)


def test_der_lets_nan_through_and_runs_under_jit():
    assert math.isnan(_f(metrics.defense_effectiveness_rating(0.9, 0.8, math.nan, 0.1)))
    jitted = jax.jit(metrics.defense_effectiveness_rating)
    assert _f(jitted(0.9, 0.9, 1.0, 0.0)) == 1.0


# --- backdoor_metrics: any predict_fn, the pipeline's figures -----------------------------


@pytest.fixture(scope="module")
def trained_tiny_model():
    """A tiny CNN trained 2 epochs on 20%-BadNets synthetic data: a model with a backdoor."""
    from jaxbd import attacks, models
    from jaxbd.data import make_synthetic
    from jaxbd.train import CosineSchedule, Trainer, make_mesh

    splits = make_synthetic(512, 200, image_size=16)
    attack = attacks.badnets(target=0, size=3)
    poisoned = attacks.poison_dataset(jax.random.key(0), splits.train, attack, fraction=0.2)
    model = models.tiny_cnn(num_classes=10, width=8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    trainer = Trainer(
        model,
        make_mesh(1),
        batch_size=64,
        eval_batch_size=64,
        mean=mean,
        std=std,
        progress=False,
    )
    steps = trainer.steps_per_epoch(len(poisoned.dataset))
    state = trainer.init_state(
        jax.random.key(1),
        splits.test.image_shape,
        CosineSchedule.create(0.05, 2 * steps),
        rng=jax.random.key(2),
    )
    data = trainer.put(poisoned.dataset.images, poisoned.dataset.labels)
    for epoch in range(2):
        state, _, _ = trainer.train_epoch(state, data, jax.random.key(10 + epoch))
    return trainer, state, splits.test, attack, model, mean, std


def test_backdoor_metrics_equals_the_pipelines_evaluate(trained_tiny_model):
    from jaxbd import attacks
    from jaxbd.pipeline.stages.test_metrics import make_evaluate_fn
    from jaxbd.train import make_predict_step

    trainer, state, test, attack, model, mean, std = trained_tiny_model
    key = jax.random.key(7)
    expected = make_evaluate_fn(trainer, test, attacks.triggered_test_set(key, test, attack))(state)
    step = make_predict_step(model, mean=mean, std=std)

    def predict_fn(images):  # the user's own inference function: images -> logits
        return step(state.params, state.batch_stats, images)[0]

    # 200 images in batches of 64: the last batch is padded, as in the trainer's inference.
    triggered = attacks.triggered_test_set(key, test, attack)
    got = metrics.backdoor_metrics(predict_fn, test, triggered, batch_size=64)
    assert set(got) == {
        "clean_accuracy",
        "attack_success_rate",
        "asr_all_images",
        "robust_accuracy",
    }
    assert got == expected
    assert all(isinstance(v, float) for v in got.values())
    assert got["attack_success_rate"] > 0.5  # a model with a backdoor: not a vacuous test
    # Another batch size pads differently; the figures do not depend on it.
    assert metrics.backdoor_metrics(predict_fn, test, triggered, batch_size=512) == expected


def test_backdoor_metrics_compiles_predict_fn_once_and_checks_its_inputs(trained_tiny_model):
    import chex

    from jaxbd import attacks
    from jaxbd.train import make_predict_step

    _, state, test, attack, model, mean, std = trained_tiny_model
    step = make_predict_step(model, mean=mean, std=std)
    triggered = attacks.triggered_test_set(jax.random.key(0), test, attack)

    @chex.assert_max_traces(n=1)
    def predict_fn(images):
        return step(state.params, state.batch_stats, images)[0]

    metrics.backdoor_metrics(predict_fn, test, triggered, batch_size=48)
    chex.clear_trace_counter()
    with pytest.raises(TypeError, match="Dataset"):
        metrics.backdoor_metrics(predict_fn, test.images, triggered)
    with pytest.raises(TypeError, match="triggered_test_set"):
        metrics.backdoor_metrics(predict_fn, test, attack)  # the attack, not its triggered set
    with pytest.raises(ValueError, match="batch_size"):
        metrics.backdoor_metrics(predict_fn, test, triggered, batch_size=0)
    with pytest.raises(ValueError, match=r"logits \[B, C\]"):
        metrics.backdoor_metrics(
            lambda x: step(state.params, state.batch_stats, x), test, triggered
        )
