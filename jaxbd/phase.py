"""A training phase: epochs with a checkpoint after each, resumable, with test evaluations.

Every training run of an experiment — pretraining for selection, training on a selection,
IMP rounds — is a named phase checkpointed under `workdir/checkpoints/<phase>`. A phase can
carry an auxiliary pytree (`aux`) that an epoch hook updates from the epoch's result, such as
forgetting statistics or per-epoch scores; it is checkpointed with the train state, so a
resumed phase continues with exactly the statistics an uninterrupted one would have.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from jaxbd import attacks, metrics
from jaxbd import logging as runlog
from jaxbd.checkpoint import Checkpointer
from jaxbd.train import DeviceData, Presentations, Trainer, TrainState


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite: later epochs could only waste time."""


EpochFn = Callable[..., tuple[TrainState, Any, "Presentations | None"]]
"""`epoch_fn(state, data, key, *, indices, desc, record_presentations) -> (state, stats,
presentations)`, like `Trainer.train_epoch`; `stats` has `EpochStats`'s fields."""

EpochHook = Callable[[int, TrainState, "Presentations | None", Any], Any]
"""`hook(epoch, state, presentations, aux) -> aux`, called after each epoch (1-based)."""


def evaluate(
    trainer: Trainer,
    state: TrainState,
    test_images: jax.Array,
    test_labels: np.ndarray,
    triggered: attacks.TriggeredTestSet,
    triggered_images: jax.Array,
) -> dict[str, float]:
    """Clean accuracy, ASR (target class excluded), ASR over all images, robust accuracy.

    Args:
        trainer: supplies the compiled inference step.
        state: the model to evaluate.
        test_images: uint8[M, H, W, 3] clean test images on the device.
        test_labels: int32[M] their labels.
        triggered: the triggered test set (its labels and eligibility mask).
        triggered_images: `triggered.images` on the device.
    """
    clean = trainer.predict_labels(state, test_images)
    poisoned = trainer.predict_labels(state, triggered_images)
    return {
        "clean_accuracy": float(metrics.clean_accuracy(clean, test_labels)),
        "attack_success_rate": float(
            metrics.attack_success_rate(poisoned, triggered.labels, triggered.true_labels)
        ),
        "asr_all_images": float(metrics.asr_all_images(poisoned, triggered.labels)),
        "robust_accuracy": float(
            metrics.robust_accuracy(poisoned, triggered.labels, triggered.true_labels)
        ),
    }


def train_phase(
    name: str,
    trainer: Trainer,
    state: TrainState,
    data: DeviceData,
    *,
    epochs: int,
    shuffle_key: jax.Array,
    rundir: runlog.RunDir,
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
    root = checkpoint_root or os.path.join(rundir.path, "checkpoints")
    checkpointer = Checkpointer(os.path.join(root, name))
    start, row = 0, {}
    latest = checkpointer.latest_step()
    if latest is not None:
        restored, meta = checkpointer.restore(latest, _bundle(state, aux))
        state, aux = restored["state"], restored.get("aux")
        start, row = int(meta["epoch"]), dict(meta.get("row", {}))
        logging.info("phase %s: resuming after epoch %d of %d", name, start, epochs)
        rundir.log({"event": "resume", "phase": name, "epoch": start})
    step = int(np.max(jax.device_get(state.step)))  # an ensemble's members share the step
    for epoch in range(start + 1, epochs + 1):
        state, stats, presentations = (epoch_fn or trainer.train_epoch)(
            state,
            data,
            _fold_in(shuffle_key, epoch),
            indices=indices,
            desc=f"{name} epoch {epoch}/{epochs}",
            record_presentations=record_presentations,
        )
        step += stats.steps
        row = {
            "event": "epoch",
            "phase": name,
            "epoch": epoch,
            "step": step,
            "loss": stats.loss,
            "accuracy": stats.accuracy,
            "lr": stats.lr,
            "seconds": stats.seconds,
            "images_per_second": stats.images_per_second,
            **getattr(stats, "extra", {}),
        }
        if evaluate_fn is not None and (
            epoch == epochs or (eval_every and epoch % eval_every == 0)
        ):
            row.update({f"test_{k}": v for k, v in evaluate_fn(state).items()})
        if epoch_hook is not None:
            aux = epoch_hook(epoch, state, presentations, aux)
        rundir.log(row)
        if not np.all(np.isfinite(np.asarray(stats.loss, np.float64))):
            checkpointer.close()
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
        checkpointer.save(epoch, _bundle(state, aux), {"epoch": epoch, "row": row})
    checkpointer.close()
    return state, row, aux


def _fold_in(key: jax.Array, epoch: int) -> jax.Array:
    if key.ndim:  # one key per ensemble member
        return jax.vmap(lambda k: jax.random.fold_in(k, epoch))(key)
    return jax.random.fold_in(key, epoch)


def _bundle(state: TrainState, aux: Any) -> dict[str, Any]:
    """What a checkpoint holds: the state, and the aux pytree when there is one."""
    return {"state": state} if aux is None else {"state": state, "aux": aux}
