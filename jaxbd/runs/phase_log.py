"""One run's side of a training phase: its checkpoints (per epoch, and mid-epoch at a
preemption request), its log rows and its evaluations (`jaxbd.runs.phase` drives it).

An epoch's row is logged, then its checkpoint saved (the row is in the checkpoint's metadata
too). A resumed phase restores the newest checkpoint that is not damaged and drops its rows
of later epochs, so `metrics.jsonl` holds each epoch once, as the final state contains it.
A mid-epoch checkpoint (`<phase>.mid_epoch/<step>`) holds the state with the epoch's done
part; it and its folder are deleted once the epoch's own checkpoint is saved.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from jaxbd.runs.checkpoint import Checkpointer
from jaxbd.runs.rundir import RunDir
from jaxbd.train import EpochProgress, TrainState, distributed, preemption

MID_EPOCH_SUFFIX = ".mid_epoch"
"""A phase's mid-epoch checkpoint (saved at a preemption request) is in `<phase>.mid_epoch`."""


Progress = EpochProgress | Sequence[EpochProgress]
"""An epoch's done part: one run's, or each member's of an ensemble trained as one phase."""


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite: later epochs could only waste time."""


class PhaseLog:
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
        found = self.checkpointer.restore_latest(bundle(state, aux), check=_check_meta)
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
                resumed["step_in_epoch"] = done_steps(progress)
            self.rundir.log(resumed)
        # An ensemble's members share the step. A resumed epoch's done steps are counted
        # again when it ends (its statistics cover the whole epoch).
        self.step = int(np.max(jax.device_get(state.step))) - done_steps(progress)
        return state, aux, start, row, progress

    def _restore_mid_epoch(self, state, aux, done: int):
        """(state, aux, progress) of a mid-epoch checkpoint of epoch `done + 1`, or None.

        One of an epoch that has since been finished (a kill between the epoch's checkpoint
        and the deletion of the mid-epoch one) is stale: it is deleted, not restored.
        """
        checkpointer = self._mid_epoch_checkpointer(create=False)
        if checkpointer is None:
            return None
        found = checkpointer.restore_latest(bundle(state, aux), check=_check_mid_epoch_meta)
        if found is None:
            return None
        _, restored, meta = found
        if meta["epoch"] != done + 1:
            self._drop_mid_epoch()
            return None
        progress = _progress_from_json(meta["progress"])
        logging.info(
            "phase %s: resuming epoch %d at step %d (saved at a preemption request)",
            self.name,
            meta["epoch"],
            done_steps(progress),
        )
        return restored["state"], restored.get("aux"), progress

    def save_mid_epoch(
        self, epoch: int, state: TrainState, progress: Progress, aux: Any, steps: int
    ) -> preemption.Preempted:
        """Saves the state in the middle of `epoch` (of `steps` steps) with its done part
        (the engine stopped the epoch at a preemption request); returns the `Preempted`
        to raise once every run of the phase is saved."""
        done = done_steps(progress)
        step = self.step + done
        meta = {"epoch": epoch, "progress": _progress_to_json(progress)}
        checkpointer = self._mid_epoch_checkpointer(create=True)
        checkpointer.save(step, bundle(state, aux), meta)
        self.rundir.log(
            {
                "event": "preempted",
                "phase": self.name,
                "epoch": epoch,
                "step_in_epoch": done,
                "step": step,
            }
        )
        return preemption.Preempted(
            self.name,
            epoch,
            done,
            f"stopped at a preemption request (SIGTERM) in phase {self.name!r}, epoch "
            f"{epoch}/{self.epochs}, after step {done} of {steps}; saved "
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
        self.checkpointer.save(epoch, bundle(state, aux), {"epoch": epoch, "row": row})
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
    if not isinstance(meta.get("epoch"), int) or not isinstance(meta.get("progress"), dict | list):
        raise ValueError(f"metadata {meta!r} is not that of a mid-epoch checkpoint")
    _progress_from_json(meta["progress"])


def done_steps(progress: Progress | None) -> int:
    """The steps of the epoch a done part covers (0 for None)."""
    if progress is None:
        return 0
    return progress.steps if isinstance(progress, EpochProgress) else progress[0].steps


def _progress_to_json(progress: Progress):
    if isinstance(progress, EpochProgress):
        return progress.to_json()
    return [p.to_json() for p in progress]


def _progress_from_json(d) -> Progress:
    if isinstance(d, list):
        return [EpochProgress.from_json(p) for p in d]
    return EpochProgress.from_json(d)


def bundle(state: TrainState, aux: Any) -> dict[str, Any]:
    """What a checkpoint holds: the state, and the aux pytree when there is one."""
    return {"state": state} if aux is None else {"state": state, "aux": aux}
