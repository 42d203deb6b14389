"""A training phase: epochs with a checkpoint after each, resumable, with test evaluations.

Every training run of a pipeline — a surrogate, pretraining for selection, training on a
selection, IMP rounds, a defense's fine-tuning — is a named phase checkpointed under
`workdir/checkpoints/<phase>` (`jaxbd.runs.phase_log`). A phase can carry an auxiliary
pytree (`aux`) that an epoch hook updates from the epoch's result, such as forgetting
statistics or per-epoch scores; it is checkpointed with the train state, so a resumed phase
continues with exactly the statistics an uninterrupted one would have.

Preemption (`jaxbd.train.preemption`): when a stop is requested, a phase trained by the
engine (`Trainer.train_epoch`, or `train_epoch_ensemble` for members trained together) stops
after the current call, saves each run's state with the epoch's done part (its position in
the epoch's permutation and the statistics of its done steps) as a mid-epoch checkpoint,
and raises `Preempted`; the resumed phase continues that epoch at the next step and ends it
with the row an uninterrupted one logs (and, recording presentations for forgetting scores,
the same presentations); so does one with a resumable epoch function (PCB's alternating
epoch). A phase whose epoch function is not resumable stops at the end of the epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxbd.runs.phase_log import MID_EPOCH_SUFFIX, PhaseLog, TrainingDivergedError
from jaxbd.runs.rundir import RunDir
from jaxbd.train import (
    DeviceData,
    EpochFn,
    EpochProgress,
    Presentations,
    Trainer,
    TrainState,
    preemption,
)

__all__ = [
    "MID_EPOCH_SUFFIX",
    "EpochHook",
    "TrainingDivergedError",
    "train_phase",
    "train_phase_group",
]

EpochHook = Callable[[int, TrainState, "Presentations | None", Any], Any]
"""`hook(epoch, state, presentations, aux) -> aux`, called after each epoch (1-based)."""


def train_phase(
    name: str,
    trainer: Trainer,
    state: TrainState,
    data: DeviceData,
    *,
    epochs: int,
    shuffle_key: jax.Array,
    rundir: RunDir,
    evaluate_fn: Callable[[TrainState], dict[str, float]] | None,
    eval_every: int,
    indices: jax.Array | None = None,
    aux: Any = None,
    epoch_hook: EpochHook | None = None,
    record_presentations: bool = False,
    checkpoint_root: str | None = None,
    epoch_fn: EpochFn | None = None,
) -> tuple[TrainState, dict[str, Any], Any]:
    """Trains for `epochs` epochs with a checkpoint after each, resuming if one exists.

    Args:
        name: phase name (checkpoint sub-directory and `phase` field of log rows).
        trainer: the compiled engine.
        state: the phase's initial state (also the template a checkpoint restores into).
        data: the on-device training data.
        epochs: epochs in this phase.
        shuffle_key: epoch e shuffles with `fold_in(shuffle_key, e)`, so a resumed run
            sees the same order as an uninterrupted one. A stacked key array (one key per
            ensemble member, for an ensemble `epoch_fn`) is folded member by member.
        rundir: where rows are logged.
        evaluate_fn: state → test metrics, called every `eval_every` epochs and at the end;
            None never evaluates.
        eval_every: evaluation period in epochs (0: only after the last epoch).
        indices: optional int32[K] examples that make up each epoch.
        aux: an optional pytree of arrays carried through the phase and checkpointed with
            the state (also the template it restores into).
        epoch_hook: optional `hook(epoch, state, presentations, aux) -> aux` run after
            every epoch, before the checkpoint.
        record_presentations: pass per-presentation correctness to the hook.
        checkpoint_root: directory holding the phase's checkpoint folder (default
            `rundir/checkpoints`).
        epoch_fn: runs one epoch instead of `trainer.train_epoch` (same arguments and
            results), e.g. a training-time attack's alternating epoch; extra statistics it
            returns in a third field of its stats (`extra`, a dict) are logged too. One
            with a true `resumable` attribute also takes `resume` and `preemptible` as
            `Trainer.train_epoch` does, and stops mid-epoch too; its stats' `progress` is
            its done part (a list of them for members trained as one phase, which it
            gets back as `resume`).

    Returns:
        (final state, last epoch's log row, final aux).
    """
    log = PhaseLog(name, rundir, epochs, evaluate_fn, eval_every, checkpoint_root)
    # Mid-epoch stops need the engine's own epoch or a resumable one (see the module
    # docstring); the engine's keeps the done part's presentations too.
    resumable = getattr(epoch_fn, "resumable", False) and not record_presentations
    mid_epoch = epoch_fn is None or resumable
    try:
        state, aux, start, row, resume = log.restore(state, aux, mid_epoch=mid_epoch)
        for epoch in range(start + 1, epochs + 1):
            # Only what applies is passed, so that any object with the plain signature of
            # `Trainer.train_epoch` can stand in for the engine.
            kwargs = {}
            if mid_epoch and preemption.armed():
                kwargs["preemptible"] = True
            if resume is not None:
                kwargs["resume"] = resume
            state, stats, presentations = (epoch_fn or trainer.train_epoch)(
                state,
                data,
                _fold_in(shuffle_key, epoch),
                indices=indices,
                desc=f"{name} epoch {epoch}/{epochs}",
                record_presentations=record_presentations,
                **kwargs,
            )
            resume = None
            if getattr(stats, "progress", None) is not None:
                steps = _epoch_steps(trainer, data, indices)
                raise log.save_mid_epoch(epoch, state, stats.progress, aux, steps)
            if epoch_hook is not None:
                aux = epoch_hook(epoch, state, presentations, aux)
            row = log.end_epoch(epoch, state, stats, aux)
            log.stop_if_requested(epoch)
    finally:
        log.close()
    return state, row, aux


def train_phase_group(
    name: str,
    trainer: Trainer,
    states: Sequence[TrainState],
    datasets: Sequence[DeviceData],
    *,
    epochs: int,
    shuffle_keys: Sequence[jax.Array],
    rundirs: Sequence[RunDir],
    evaluate_fns: Sequence[Callable[[TrainState], dict[str, float]] | None],
    eval_every: int,
    indices: Sequence[jax.Array] | None = None,
    epoch_fn: EpochFn | None = None,
) -> tuple[list[TrainState], list[dict[str, Any]]]:
    """One phase of M independent runs (e.g. replicate seeds), trained together.

    Member m runs the computation of `train_phase(name, trainer, states[m], datasets[m],
    shuffle_key=shuffle_keys[m], rundir=rundirs[m], ...)` (same data order, augmentation
    and schedule; batched kernels round differently, which training amplifies over many
    steps) and writes the same log rows and checkpoints into its own run directory, so a
    run may switch between grouped and one-at-a-time execution at any epoch. Members at
    the same step of the same epoch train as one `vmap`-batched model
    (`Trainer.train_epoch_ensemble` with one dataset per member); a member that resumed
    ahead of others waits until they catch up, so no step is trained twice. A stop
    requested mid-epoch saves every member's done part, as `train_phase` does. One member
    is `train_phase` itself.

    Args:
        name: phase name (checkpoint sub-directory and `phase` field of log rows).
        trainer: the compiled engine.
        states: each member's initial state (also its checkpoint template).
        datasets: each member's on-device training data, all of one shape.
        epochs: epochs in this phase.
        shuffle_keys: each member's shuffle key (folded with the epoch, as in
            `train_phase`).
        rundirs: each member's run directory.
        evaluate_fns: each member's test metrics (or None: never evaluated).
        eval_every: evaluation period in epochs (0: only after the last epoch).
        indices: optional int32[K] examples making up each member's epoch, one per member
            (all of one size).
        epoch_fn: an epoch function replacing `trainer.train_epoch` (see `train_phase`);
            only for a single member, since it trains one model.

    Returns:
        (each member's final state, each member's last log row).

    Raises:
        ValueError: for sequences of different lengths, or an `epoch_fn` with several
            members.
    """
    m_total = len(states)
    if not (len(datasets) == len(shuffle_keys) == len(rundirs) == len(evaluate_fns) == m_total):
        raise ValueError(
            "train_phase_group needs one dataset, key, rundir and evaluate_fn per state"
        )
    if indices is not None and len(indices) != m_total:
        raise ValueError(f"{m_total} members but {len(indices)} index sets")
    if m_total == 1:
        state, row, _ = train_phase(
            name,
            trainer,
            states[0],
            datasets[0],
            epochs=epochs,
            shuffle_key=shuffle_keys[0],
            rundir=rundirs[0],
            evaluate_fn=evaluate_fns[0],
            eval_every=eval_every,
            indices=None if indices is None else indices[0],
            epoch_fn=epoch_fn,
        )
        return [state], [row]
    if epoch_fn is not None:
        raise ValueError("an epoch_fn trains one model; train its members one at a time")
    logs = [PhaseLog(name, rundirs[m], epochs, evaluate_fns[m], eval_every) for m in range(m_total)]
    states, done, rows = list(states), [0] * m_total, [{}] * m_total
    resume: list[EpochProgress | None] = [None] * m_total
    for m in range(m_total):
        states[m], _, done[m], rows[m], resume[m] = logs[m].restore(states[m], None)
    try:
        stacked, stacked_for, stacked_data, stacked_indices = None, (), None, None
        while min(done) < epochs:
            epoch = min(done) + 1
            # Members at one step of one epoch train together; the furthest behind first.
            at = {m: resume[m].steps if resume[m] else 0 for m in range(m_total)}
            at = {m: s for m, s in at.items() if done[m] == epoch - 1}
            group = tuple(m for m in at if at[m] == min(at.values()))
            desc = f"{name} epoch {epoch}/{epochs}"
            # Only what applies is passed (see `train_phase`).
            kwargs: dict[str, Any] = {"preemptible": True} if preemption.armed() else {}
            if resume[group[0]] is not None:
                parts = [resume[m] for m in group]
                kwargs["resume"] = parts[0] if len(group) == 1 else parts
            if len(group) == 1:
                (m,) = group
                states[m], stats, _ = trainer.train_epoch(
                    states[m],
                    datasets[m],
                    jax.random.fold_in(shuffle_keys[m], epoch),
                    indices=None if indices is None else indices[m],
                    desc=desc,
                    **kwargs,
                )
                stats = [stats]
                stacked_for = ()  # the next group stacks afresh
            else:
                if group != stacked_for:
                    stacked = trainer.stack([states[m] for m in group])
                    stacked_data = trainer.stack_data([datasets[m] for m in group])
                    stacked_indices = (
                        None
                        if indices is None
                        else trainer.replicate(jnp.stack([indices[m] for m in group]))
                    )
                    stacked_for = group
                keys = jnp.stack([jax.random.fold_in(shuffle_keys[m], epoch) for m in group])
                stacked, stats, _ = trainer.train_epoch_ensemble(
                    stacked, stacked_data, keys, indices=stacked_indices, desc=desc, **kwargs
                )
                for j, m in enumerate(group):
                    states[m] = trainer.unstack(stacked, j)
            for m in group:
                resume[m] = None
            if getattr(stats[0], "progress", None) is not None:  # every member saved, then stop
                steps = _epoch_steps(
                    trainer, datasets[group[0]], None if indices is None else indices[group[0]]
                )
                stops = [
                    logs[m].save_mid_epoch(epoch, states[m], stats[j].progress, None, steps)
                    for j, m in enumerate(group)
                ]
                raise stops[0]
            for j, m in enumerate(group):
                extra = {"trained_together": len(group)} if len(group) > 1 else {}
                rows[m] = logs[m].end_epoch(epoch, states[m], stats[j], None, extra)
                done[m] = epoch
            logs[group[0]].stop_if_requested(epoch)
    finally:
        for log in logs:
            log.close()
    return states, rows


def _epoch_steps(trainer: Trainer, data: DeviceData, indices: jax.Array | None) -> int:
    """Steps of an epoch over `indices` (default: all of `data`)."""
    return trainer.steps_per_epoch(len(data) if indices is None else int(indices.shape[0]))


def _fold_in(key: jax.Array, epoch: int) -> jax.Array:
    if key.ndim:  # one key per ensemble member
        return jax.vmap(lambda k: jax.random.fold_in(k, epoch))(key)
    return jax.random.fold_in(key, epoch)
