"""A training phase: epochs with a checkpoint after each, resumable, with test evaluations.

Every training run of a pipeline — a surrogate, pretraining for selection, training on a
selection, IMP rounds, later a defense's fine-tuning — is a named phase checkpointed under
`workdir/checkpoints/<phase>`. A phase can
carry an auxiliary pytree (`aux`) that an epoch hook updates from the epoch's result, such as
forgetting statistics or per-epoch scores; it is checkpointed with the train state, so a
resumed phase continues with exactly the statistics an uninterrupted one would have.

An epoch's row is logged, then its checkpoint saved (the row is in the checkpoint's metadata
too). A resumed phase restores the newest checkpoint that is not damaged and drops its rows
of later epochs, so `metrics.jsonl` holds each epoch once, as the final state contains it.

Preemption (`jaxbd.train.preemption`): when a stop is requested, a phase trained by
`Trainer.train_epoch` stops after the current call, saves the state with the epoch's done
part (its position in the epoch's permutation and the statistics of its done steps) under
`checkpoints/<phase>.mid_epoch/<step>`, and raises `Preempted`; the resumed phase continues
that epoch at the next step and ends it with the row an uninterrupted one logs. Phases that
train otherwise (an attack's own epoch function, presentations recorded for forgetting
scores, several members trained together) stop at the end of the epoch instead. The
mid-epoch checkpoint and its folder are deleted once the epoch's own checkpoint is saved.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxbd.runs.checkpoint import Checkpointer
from jaxbd.runs.rundir import RunDir
from jaxbd.train import (
    DeviceData,
    EpochFn,
    EpochProgress,
    Presentations,
    Trainer,
    TrainState,
    distributed,
    preemption,
)

MID_EPOCH_SUFFIX = ".mid_epoch"
"""A phase's mid-epoch checkpoint (saved at a preemption request) is in `<phase>.mid_epoch`."""


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite: later epochs could only waste time."""


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
            returns in a third field of its stats (`extra`, a dict) are logged too.

    Returns:
        (final state, last epoch's log row, final aux).
    """
    log = _PhaseLog(name, rundir, epochs, evaluate_fn, eval_every, checkpoint_root)
    # Mid-epoch stops need the engine's own epoch (see the module docstring).
    mid_epoch = epoch_fn is None and not record_presentations
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
                log.stop_mid_epoch(epoch, state, stats.progress, aux, trainer, data, indices)
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
    the same epoch train as one `vmap`-batched model (`Trainer.train_epoch_ensemble` with
    one dataset per member); a member that resumed ahead of others waits until they catch
    up, so no epoch is trained twice. One member is `train_phase` itself.

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
    logs = [
        _PhaseLog(name, rundirs[m], epochs, evaluate_fns[m], eval_every) for m in range(m_total)
    ]
    states, done, rows = list(states), [0] * m_total, [{}] * m_total
    for m in range(m_total):
        # A member's mid-epoch checkpoint (saved when it trained alone) is not continued
        # here: the epoch is trained again from its start, in the group.
        states[m], _, done[m], rows[m], _ = logs[m].restore(states[m], None, mid_epoch=False)
    try:
        stacked, stacked_for, stacked_data, stacked_indices = None, (), None, None
        while min(done) < epochs:
            epoch = min(done) + 1
            group = tuple(m for m in range(m_total) if done[m] == epoch - 1)
            desc = f"{name} epoch {epoch}/{epochs}"
            if len(group) == 1:
                (m,) = group
                states[m], stats, _ = trainer.train_epoch(
                    states[m],
                    datasets[m],
                    jax.random.fold_in(shuffle_keys[m], epoch),
                    indices=None if indices is None else indices[m],
                    desc=desc,
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
                    stacked, stacked_data, keys, indices=stacked_indices, desc=desc
                )
                for j, m in enumerate(group):
                    states[m] = trainer.unstack(stacked, j)
            for j, m in enumerate(group):
                extra = {"trained_together": len(group)} if len(group) > 1 else {}
                rows[m] = logs[m].end_epoch(epoch, states[m], stats[j], None, extra)
                done[m] = epoch
            logs[group[0]].stop_if_requested(epoch)
    finally:
        for log in logs:
            log.close()
    return states, rows


class _PhaseLog:
    """One run's side of a phase: its checkpoints, log rows and evaluations."""

    def __init__(
        self,
        name: str,
        rundir: RunDir,
        epochs: int,
        evaluate_fn: Callable[[TrainState], dict[str, float]] | None,
        eval_every: int,
        checkpoint_root: str | None = None,
    ):
        root = checkpoint_root or os.path.join(rundir.path, "checkpoints")
        self.name, self.rundir, self.epochs = name, rundir, epochs
        self.evaluate_fn, self.eval_every = evaluate_fn, eval_every
        self.checkpointer = Checkpointer(os.path.join(root, name))
        self._mid_epoch_dir = os.path.join(root, name + MID_EPOCH_SUFFIX)
        self._mid_epoch: Checkpointer | None = None
        self.step = 0

    def _mid_epoch_checkpointer(self, *, create: bool) -> Checkpointer | None:
        """The mid-epoch checkpoints (created on first save, so that a phase that is never
        preempted leaves no folder for them)."""
        if self._mid_epoch is None and (create or os.path.isdir(self._mid_epoch_dir)):
            self._mid_epoch = Checkpointer(self._mid_epoch_dir, max_to_keep=1)
        return self._mid_epoch

    def restore(
        self, state: TrainState, aux: Any, *, mid_epoch: bool = True
    ) -> tuple[TrainState, Any, int, dict, EpochProgress | None]:
        """(state, aux, epochs done, last row, done part of the next epoch or None): from
        the newest checkpoint that restores, and a mid-epoch checkpoint of the next epoch
        if there is one (and `mid_epoch`).

        A damaged newest checkpoint falls back to the previous kept one (with a warning;
        `Checkpointer.restore_latest`). Rows of this phase's epochs after the restored one
        are then dropped from the log: they were logged before a kill kept their checkpoint
        from being written (or it was damaged), and the epochs are trained again, so the
        log holds each epoch once, as the final state contains it.

        Raises:
            CheckpointError: checkpoints exist but none can be restored (a RunDirError
                naming the folder to move away).
        """
        start, row = 0, {}
        found = self.checkpointer.restore_latest(_bundle(state, aux), check=_check_meta)
        if found is not None:
            _, restored, meta = found
            state, aux = restored["state"], restored.get("aux")
            start, row = int(meta["epoch"]), dict(meta.get("row", {}))
            logging.info("phase %s: resuming after epoch %d of %d", self.name, start, self.epochs)
        dropped = self.rundir.drop_rows(
            lambda r: (
                r.get("event") == "epoch"
                and r.get("phase") == self.name
                and isinstance(r.get("epoch"), int)
                and r["epoch"] > start
            )
        )
        if dropped:
            logging.warning(
                "phase %s: dropped the log rows of epoch(s) %s from %s: no checkpoint holds "
                "them, so they are trained again",
                self.name,
                sorted({r["epoch"] for r in dropped}),
                self.rundir.file("metrics.jsonl"),
            )
        progress = None
        if mid_epoch and (partial := self._restore_mid_epoch(state, aux, start)) is not None:
            state, aux, progress = partial
        if found is not None or progress is not None:
            resumed = {"event": "resume", "phase": self.name, "epoch": start}
            if progress is not None:
                resumed["step_in_epoch"] = progress.steps
            self.rundir.log(resumed)
        # An ensemble's members share the step. A resumed epoch's done steps are counted
        # again when it ends (its statistics cover the whole epoch).
        self.step = int(np.max(jax.device_get(state.step))) - (progress.steps if progress else 0)
        return state, aux, start, row, progress

    def _restore_mid_epoch(self, state, aux, done: int):
        """(state, aux, progress) of a mid-epoch checkpoint of epoch `done + 1`, or None.

        One of an epoch that has since been finished (a kill between the epoch's checkpoint
        and the deletion of the mid-epoch one) is stale: it is deleted, not restored.
        """
        checkpointer = self._mid_epoch_checkpointer(create=False)
        if checkpointer is None:
            return None
        found = checkpointer.restore_latest(_bundle(state, aux), check=_check_mid_epoch_meta)
        if found is None:
            return None
        _, restored, meta = found
        if meta["epoch"] != done + 1:
            self._drop_mid_epoch()
            return None
        progress = EpochProgress.from_json(meta["progress"])
        logging.info(
            "phase %s: resuming epoch %d at step %d (saved at a preemption request)",
            self.name,
            meta["epoch"],
            progress.steps,
        )
        return restored["state"], restored.get("aux"), progress

    def stop_mid_epoch(
        self,
        epoch: int,
        state: TrainState,
        progress: EpochProgress,
        aux: Any,
        trainer: Trainer,
        data: DeviceData,
        indices: jax.Array | None,
    ):
        """Saves the state in the middle of `epoch` with its done part, then raises
        `Preempted` (the engine stopped the epoch at a preemption request)."""
        num = len(data) if indices is None else int(indices.shape[0])
        steps = trainer.steps_per_epoch(num)
        step = self.step + progress.steps
        meta = {"epoch": epoch, "progress": progress.to_json()}
        checkpointer = self._mid_epoch_checkpointer(create=True)
        checkpointer.save(step, _bundle(state, aux), meta)
        self.rundir.log(
            {
                "event": "preempted",
                "phase": self.name,
                "epoch": epoch,
                "step_in_epoch": progress.steps,
                "step": step,
            }
        )
        raise preemption.Preempted(
            self.name,
            epoch,
            progress.steps,
            f"stopped at a preemption request (SIGTERM) in phase {self.name!r}, epoch "
            f"{epoch}/{self.epochs}, after step {progress.steps} of {steps}; saved "
            f"{checkpointer.step_dir(step)}",
        )

    def stop_if_requested(self, epoch: int) -> None:
        """Raises `Preempted` at an epoch's end if a stop was requested (its checkpoint
        is saved: the resumed phase starts with the next epoch)."""
        if preemption.stop_requested():
            raise preemption.Preempted(
                self.name,
                epoch,
                0,
                f"stopped at a preemption request (SIGTERM) after epoch {epoch}/"
                f"{self.epochs} of phase {self.name!r}; saved {self.checkpointer.step_dir(epoch)}",
            )

    def end_epoch(
        self, epoch: int, state: TrainState, stats, aux: Any, extra: dict | None = None
    ) -> dict[str, Any]:
        """Logs the epoch (evaluating when due), stops a diverged run, saves a checkpoint.

        Returns:
            The epoch's log row.

        Raises:
            TrainingDivergedError: if the epoch's loss is NaN or infinite.
        """
        name, epochs = self.name, self.epochs
        self.step += stats.steps
        row = {
            "event": "epoch",
            "phase": name,
            "epoch": epoch,
            "step": self.step,
            "loss": stats.loss,
            "accuracy": stats.accuracy,
            "lr": stats.lr,
            "seconds": stats.seconds,
            "images_per_second": stats.images_per_second,
            **getattr(stats, "extra", {}),
            **(extra or {}),
        }
        if self.evaluate_fn is not None and (
            epoch == epochs or (self.eval_every and epoch % self.eval_every == 0)
        ):
            row.update({f"test_{k}": v for k, v in self.evaluate_fn(state).items()})
        self.rundir.log(row)
        if not np.all(np.isfinite(np.asarray(stats.loss, np.float64))):
            self.checkpointer.close()
            raise TrainingDivergedError(
                f"phase {name!r}: the training loss is {stats.loss} after epoch {epoch} of "
                f"{epochs}: training diverged (the log has the epoch's row; the last "
                f"checkpoint, of epoch {epoch - 1}, is kept, but resuming would diverge "
                "again). Start a new run directory with a lower config.train.lr, or gentler "
                "attack or selection settings."
            )
        logging.info(
            "%s epoch %d/%d: loss %.4f, train accuracy %.4f, %.1f s (%.0f images/s)%s",
            name,
            epoch,
            epochs,
            stats.loss,
            stats.accuracy,
            stats.seconds,
            stats.images_per_second,
            f", test accuracy {row['test_clean_accuracy']:.4f}, ASR "
            f"{row['test_attack_success_rate']:.4f}"
            if "test_clean_accuracy" in row
            else "",
        )
        self.checkpointer.save(epoch, _bundle(state, aux), {"epoch": epoch, "row": row})
        if self._mid_epoch is not None:
            self._drop_mid_epoch()
        return row

    def _drop_mid_epoch(self) -> None:
        """Deletes the mid-epoch checkpoint, superseded by the epoch's own, and its folder."""
        self._mid_epoch.delete_all()
        self._mid_epoch.close()
        self._mid_epoch = None
        if distributed.is_writer():
            with contextlib.suppress(OSError):  # left as it is if anything else is in it
                os.rmdir(self._mid_epoch_dir)
        distributed.sync(f"jaxbd:mid_epoch_dropped:{self._mid_epoch_dir}")

    def close(self) -> None:
        self.checkpointer.close()
        if self._mid_epoch is not None:
            self._mid_epoch.close()


def _check_meta(step: int, meta: dict) -> None:
    """Rejects metadata that is not what `end_epoch` saves for epoch `step` (a checkpoint
    whose metadata file was garbled into other valid JSON)."""
    if not isinstance(meta.get("epoch"), int) or meta["epoch"] != step:
        raise ValueError(f"metadata {meta!r} does not hold epoch {step}")
    if not isinstance(meta.get("row", {}), dict):
        raise ValueError(f"metadata row {meta['row']!r} is not a dict")


def _check_mid_epoch_meta(step: int, meta: dict) -> None:
    """Rejects metadata that is not what `stop_mid_epoch` saves."""
    if not isinstance(meta.get("epoch"), int) or not isinstance(meta.get("progress"), dict):
        raise ValueError(f"metadata {meta!r} is not that of a mid-epoch checkpoint")
    EpochProgress.from_json(meta["progress"])


def _fold_in(key: jax.Array, epoch: int) -> jax.Array:
    if key.ndim:  # one key per ensemble member
        return jax.vmap(lambda k: jax.random.fold_in(k, epoch))(key)
    return jax.random.fold_in(key, epoch)


def _bundle(state: TrainState, aux: Any) -> dict[str, Any]:
    """What a checkpoint holds: the state, and the aux pytree when there is one."""
    return {"state": state} if aux is None else {"state": state, "aux": aux}
