"""The tuning loop every repair shares: steps in chunks of `eval_every`, a curve row at step 0
and after each chunk, and the Δ budget on validation accuracy.

`tune` runs a `TuningPlan` on the engine (`Trainer.train_steps`: one compiled step function,
the data on the devices, the mask and the schedule as data). After each chunk it evaluates
the validation accuracy; once that falls more than Δ below the step-0 (undefended, or
as-planned) value it stops and returns the last model within the budget. Test metrics, when an
`evaluate_fn` is given, are only recorded on the curve (`test_*` fields); no decision reads
them. The loop is resumable: `on_eval` receives everything needed to continue, and `resume`
takes it back.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxbd.data import Dataset
from jaxbd.defenses.base import RepairContext, TuningPlan, Variables, copy_tree
from jaxbd.defenses.curve import within_budget
from jaxbd.train import CosineSchedule, Trainer, TrainState

EvaluateFn = Callable[[TrainState], dict[str, float]]


@dataclasses.dataclass
class TuneProgress:
    """Where a tuning run stands (what `on_eval` receives and `resume` takes back).

    Attributes:
        step: steps done.
        state: the train state after `step` steps.
        best: the variables of the last row within the budget, and its step.
        rows: the curve rows so far.
        base_val_accuracy: the step-0 validation accuracy.
        stopped: whether the budget was exceeded `patience` times in a row (no more steps
            will run).
    """

    step: int
    state: TrainState
    best: tuple[int, Variables]
    rows: list[dict[str, Any]]
    base_val_accuracy: float
    stopped: bool = False


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """What `tune` returns.

    Attributes:
        variables: the returned model (the last one within the budget).
        returned_step: its step on the curve.
        steps: steps trained (≥ returned_step).
        stopped_early: whether the Δ budget stopped the run before its step budget.
        rows: the whole curve.
        seconds: training time of this invocation.
    """

    variables: Variables
    returned_step: int
    steps: int
    stopped_early: bool
    rows: list[dict[str, Any]]
    seconds: float


def tune(
    ctx: RepairContext,
    plan: TuningPlan,
    *,
    eval_every: int = 50,
    delta: float = 0.02,
    patience: int = 1,
    evaluate_fn: EvaluateFn | None = None,
    base: Variables | None = None,
    on_eval: Callable[[TuneProgress], None] | None = None,
    resume: TuneProgress | None = None,
    desc: str = "repair",
) -> TuneResult:
    """Runs a plan's steps with the trade-off curve and the Δ budget.

    The step-0 row evaluates the undefended model (`base`; default the plan's starting
    model), and its validation accuracy is the budget's reference. When the plan starts
    from another model (e.g. Fine-Pruning's pruned network), that model is what step 0
    returns if it is within the budget, else the undefended one.

    Args:
        ctx: the repair context (engine, defender's data, validation).
        plan: what to tune.
        eval_every: steps between curve rows (>= 1).
        delta: the budget on validation accuracy, absolute (e.g. 0.02).
        patience: stop after this many consecutive rows out of the budget (1: at the first).
            A few hundred validation images measure accuracy in steps of a fraction of a
            percent, so one row below the budget can be noise; the returned model is the last
            one within the budget either way.
        evaluate_fn: optional test metrics of a state, recorded on the curve as `test_*`.
        base: the undefended model (default: `plan.variables`).
        on_eval: called after every row (e.g. to checkpoint and log it).
        resume: continue from this progress instead of step 0.
        desc: progress-bar label.

    Returns:
        The returned model and the curve.
    """
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    trainer = ctx.trainer
    started = time.perf_counter()
    stream = jax.random.fold_in(ctx.key, 1)

    if ctx.validate is None and plan.steps > 0:
        raise ValueError("tuning needs the defender's validation images (ctx.validate)")

    def row_for(step, state, stats=None):
        # `state` may be a TrainState or Variables: both have params and batch_stats.
        # No validation images (a data-free repair): nothing to budget, None on the curve.
        val = None if ctx.validate is None else ctx.validate(state.params, state.batch_stats)
        row = {"step": step, "val_accuracy": val}
        if stats is not None:
            row.update(loss=stats.loss, train_accuracy=stats.accuracy, lr=stats.lr, **stats.extra)
        if evaluate_fn is not None:
            row.update({f"test_{k}": v for k, v in evaluate_fn(state).items()})
        return row

    if resume is None:
        undefended = plan.variables if base is None else base
        row = row_for(0, undefended)
        state = start_state(ctx, plan)
        best = undefended
        if undefended is not plan.variables and (
            ctx.validate is None
            or within_budget(
                ctx.validate(state.params, state.batch_stats), row["val_accuracy"], delta
            )
        ):
            best = plan.variables
        progress = TuneProgress(
            step=0,
            state=state,
            best=(0, _copy(best)),
            rows=[row],
            base_val_accuracy=row["val_accuracy"],
        )
        if on_eval is not None:
            on_eval(progress)
    else:
        progress = resume
    while progress.step < plan.steps and not progress.stopped:
        n = min(eval_every, plan.steps - progress.step)
        state, stats = trainer.train_steps(
            progress.state,
            plan.data,
            stream,
            start=progress.step,
            steps=n,
            variant=plan.variant,
            extra=plan.extra,
            desc=f"{desc} steps {progress.step + 1}-{progress.step + n}/{plan.steps}",
        )
        step = progress.step + n
        row = row_for(step, state, stats)
        progress.step, progress.state = step, state
        progress.rows.append(row)
        if within_budget(row["val_accuracy"], progress.base_val_accuracy, delta):
            progress.best = (step, _variables(state))
        else:
            # Consecutive rows out of the budget (the rows since the returned one).
            out = sum(1 for r in progress.rows if r["step"] > progress.best[0])
            progress.stopped = out >= patience
        if on_eval is not None:
            on_eval(progress)
    best_step, best = progress.best
    return TuneResult(
        variables=best,
        returned_step=best_step,
        steps=progress.step,
        stopped_early=progress.stopped,
        rows=progress.rows,
        seconds=time.perf_counter() - started,
    )


def start_state(ctx: RepairContext, plan: TuningPlan) -> TrainState:
    """The train state a plan starts from: its variables (copied), its mask, a fresh
    optimizer and its learning-rate schedule (constant, or cosine to 0)."""
    schedule = CosineSchedule.create(
        plan.lr, max(plan.steps, 1), end=0.0 if plan.cosine else plan.lr
    )
    v = plan.variables
    return ctx.trainer.new_state(
        copy_tree(v.params),
        copy_tree(v.batch_stats),
        schedule,
        rng=jax.random.fold_in(ctx.key, 2),
        mask=copy_tree(v.mask),  # the state's buffers are donated by the steps
    )


def _copy(v: Variables) -> Variables:
    return Variables(copy_tree(v.params), copy_tree(v.batch_stats), copy_tree(v.mask))


def _variables(state: TrainState) -> Variables:
    """A copy of a state's model (the state itself is donated by the next step)."""
    return Variables(
        params=copy_tree(state.params),
        batch_stats=copy_tree(state.batch_stats),
        mask=copy_tree(state.mask),
    )


def validator(trainer: Trainer, val: Dataset) -> Callable[[Any, Any], float]:
    """`validate(params, batch_stats) -> accuracy` on the defender's held-out images (copied
    to the devices once): the one figure every repair decision reads."""
    images = trainer.replicate(val.images)

    def validate(params, batch_stats) -> float:
        logits, _ = trainer.predict_variables(params, batch_stats, images)
        predictions = np.asarray(jax.device_get(logits.argmax(-1)))
        return float(np.mean(predictions == val.labels))

    return validate
