"""The shared tuning loop: the step-0 row, the Δ budget, resuming in pieces."""

import chex
import jax
import numpy as np
import pytest

from jaxbd import defenses
from jaxbd.data import make_synthetic
from jaxbd.defenses import RepairContext, TuningPlan, Variables
from jaxbd.models import tiny_cnn
from jaxbd.train import CosineSchedule, Trainer, make_mesh

SPLITS = make_synthetic(num_train=128, num_test=32, image_size=8, seed=0)


@pytest.fixture(scope="module")
def ctx_and_model():
    trainer = Trainer(
        tiny_cnn(num_classes=10, width=4),
        make_mesh(1),
        batch_size=16,
        eval_batch_size=32,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        progress=False,
    )
    state = trainer.init_state(
        jax.random.key(0), (8, 8, 3), CosineSchedule.create(0.1, 10), rng=jax.random.key(1)
    )
    data = defenses.defender_data(
        jax.random.key(2),
        SPLITS.train,
        np.zeros(128, bool),
        defenses.DefenderDataSettings(fraction=0.5, val_fraction=0.25),
    )
    ctx = RepairContext(
        trainer=trainer,
        defender=data,
        tune_data=trainer.put(data.tune.images, data.tune.labels),
        key=jax.random.key(3),
        validate=lambda params, batch_stats: 0.5,
        num_classes=10,
    )
    return ctx, Variables(state.params, state.batch_stats, state.mask)


def _with_validate(ctx, values):
    """A context whose validation accuracies are `values`, in call order."""
    calls = iter(values)
    return RepairContext(**{**ctx.__dict__, "validate": lambda p, b: next(calls)})


def test_delta_stop_returns_the_last_checkpoint_within_the_budget(ctx_and_model):
    ctx, model = ctx_and_model
    plan = TuningPlan(variables=model, data=ctx.tune_data, steps=50, lr=0.01)
    # step 0: 0.80 (base); 10: 0.79; 20: 0.785 (within 0.02); 30: 0.75 -> stop.
    result = defenses.tune(
        _with_validate(ctx, [0.80, 0.79, 0.785, 0.75, 0.9, 0.9]), plan, eval_every=10
    )
    assert [r["step"] for r in result.rows] == [0, 10, 20, 30]
    assert result.stopped_early and result.returned_step == 20 and result.steps == 30


def test_step_zero_row_evaluates_the_undefended_model(ctx_and_model):
    ctx, model = ctx_and_model
    seen = []

    def evaluate_fn(state):
        seen.append(jax.device_get(state.params))
        return {"clean_accuracy": 0.3, "attack_success_rate": 0.9}

    plan = TuningPlan(variables=model, data=ctx.tune_data, steps=4, lr=0.01)
    result = defenses.tune(ctx, plan, eval_every=4, evaluate_fn=evaluate_fn)
    chex.assert_trees_all_equal(seen[0], jax.device_get(model.params))
    assert result.rows[0]["test_clean_accuracy"] == 0.3 and result.rows[0]["step"] == 0
    assert result.returned_step == 4 and not result.stopped_early


def test_tuning_in_pieces_equals_tuning_in_one_go(ctx_and_model):
    ctx, model = ctx_and_model
    plan = TuningPlan(variables=model, data=ctx.tune_data, steps=12, lr=0.05)
    one = defenses.tune(ctx, plan, eval_every=12)
    pieces = defenses.tune(ctx, plan, eval_every=4)
    chex.assert_trees_all_close(one.variables.params, pieces.variables.params, atol=1e-6)
    assert len(pieces.rows) == 4 and len(one.rows) == 2


def test_zero_steps_returns_the_plan_model(ctx_and_model):
    ctx, model = ctx_and_model
    plan = TuningPlan(variables=model, data=ctx.tune_data, steps=0, lr=0.01)
    result = defenses.tune(ctx, plan, eval_every=5)
    assert result.steps == 0 and result.returned_step == 0 and len(result.rows) == 1
    chex.assert_trees_all_equal(result.variables.params, model.params)


def test_patience_tolerates_noisy_rows_and_still_returns_the_last_in_budget(ctx_and_model):
    ctx, model = ctx_and_model
    plan = TuningPlan(variables=model, data=ctx.tune_data, steps=60, lr=0.01)
    # base 0.80; 10: 0.75 (out); 20: 0.79 (in); 30: 0.70, 40: 0.70 (out twice) -> stop.
    values = [0.80, 0.75, 0.79, 0.70, 0.70, 0.9, 0.9]
    result = defenses.tune(_with_validate(ctx, values), plan, eval_every=10, patience=2)
    assert [r["step"] for r in result.rows] == [0, 10, 20, 30, 40]
    assert result.stopped_early and result.returned_step == 20
    with pytest.raises(ValueError, match="patience"):
        defenses.tune(ctx, plan, patience=0)


def test_oracle_asr_at_delta_reads_the_curve_within_the_test_accuracy_budget():
    rows = [
        {"test_clean_accuracy": 0.80, "test_attack_success_rate": 0.99},
        {"test_clean_accuracy": 0.79, "test_attack_success_rate": 0.40},
        {"test_clean_accuracy": 0.70, "test_attack_success_rate": 0.01},  # out of Δ = 0.02
    ]
    assert defenses.oracle_asr_at_delta(rows, 0.02) == 0.40
    assert defenses.oracle_asr_at_delta(rows, 0.10) == 0.01
    assert defenses.oracle_asr_at_delta([{"val_accuracy": 0.5}], 0.02) is None


def test_oracle_candidate_is_the_lowest_test_asr_within_delta():
    rows = [
        {"threshold": 0.0, "test_clean_accuracy": 0.80, "test_attack_success_rate": 0.90},
        {"threshold": 0.1, "test_clean_accuracy": 0.785, "test_attack_success_rate": 0.30},
        {"threshold": 0.2, "test_clean_accuracy": 0.79, "test_attack_success_rate": 0.30},
        {"threshold": 0.3, "test_clean_accuracy": 0.60, "test_attack_success_rate": 0.00},
        {"threshold": 0.4, "test_clean_accuracy": 0.80, "test_attack_success_rate": float("nan")},
    ]
    best = defenses.oracle_candidate_at_delta(rows, base_clean_accuracy=0.80, delta=0.02)
    assert best["threshold"] == 0.1  # the tie at 0.30 goes to the earlier row
    assert defenses.oracle_candidate_at_delta(rows, 0.80, 0.25)["threshold"] == 0.3
    assert defenses.oracle_candidate_at_delta(rows[3:4], 0.80, 0.02) is None


def test_tolerated_errors_is_the_budget_rule_counted_in_images():
    from jaxbd.defenses.curve import budget_warning, tolerated_errors, within_budget

    for delta in (0.0, 0.02, 0.05, 0.1):
        for n in (1, 10, 25, 40, 49, 50, 51, 100, 500):
            for base_errors in (0, 1, 3):
                if base_errors > n:
                    continue
                base = (n - base_errors) / n
                # The most extra errors a row may have and stay within the budget, by brute force.
                most = max(
                    k
                    for k in range(n - base_errors + 1)
                    if within_budget((n - base_errors - k) / n, base, delta)
                )
                assert tolerated_errors(delta, n) == most, (delta, n, base_errors)
            warning = budget_warning(delta, n, "config.defense.delta")
            assert (warning is None) == (tolerated_errors(delta, n) >= 1), (delta, n)
    assert "40 held-out images" in budget_warning(0.02, 40, "config.defense.delta")
    assert budget_warning(0.02, 50, "config.defense.delta") is None
