"""A thin orbax wrapper: save and restore a pytree state plus JSON metadata per epoch.

Typed PRNG keys are stored as their raw uint32 key data (orbax stores plain arrays) and
re-wrapped on restore with the implementation of the template's keys.

A damaged checkpoint (a truncated array file, garbled metadata, anything orbax cannot read)
does not block a resume: `Checkpointer.restore_latest` falls back to the newest step that
restores, with a warning naming each damaged step folder, and moves the damaged newer ones
aside (never deleting them) so that their steps can be saved again.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import orbax.checkpoint as ocp
from absl import logging

from jaxbd.runs.rundir import RunDirError
from jaxbd.train import distributed
from jaxbd.types import PyTree

DAMAGED_SUFFIX = ".damaged"
"""Damaged step folders of `<dir>` are moved to `<dir>.damaged/<step>`."""


class CheckpointError(RunDirError):
    """No checkpoint of a phase can be restored."""


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _data_to_keys(tree: PyTree, template: PyTree) -> PyTree:
    return jax.tree.map(
        lambda x, t: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x,
        tree,
        template,
    )


def _short(error: BaseException) -> str:
    """One line about an error (orbax and tensorstore messages run to many lines)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


class Checkpointer:
    """Per-epoch checkpoints of one training phase in `directory`.

    Args:
        directory: where checkpoints live (created if missing); step `s` is the folder
            `directory/<s>`.
        max_to_keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_to_keep = max_to_keep
        self._manager = self._new_manager()

    def _new_manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True)
        return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def _reopen(self) -> None:
        """Replaces the manager: after a failed restore orbax's may be unusable (its event
        loop closed), and after a step folder moved its list of steps is stale."""
        try:
            self._manager.close()
        except Exception as e:  # a broken manager may fail to close; it is dropped anyway
            logging.info("closing the checkpoint manager of %s failed: %s", self.directory, e)
        self._manager = self._new_manager()

    def step_dir(self, step: int) -> str:
        """The folder of step `step`."""
        return os.path.join(self.directory, str(step))

    def latest_step(self) -> int | None:
        """The newest saved step (epoch), or None if there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The saved steps, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: PyTree, meta: dict) -> None:
        """Saves `state` and JSON-serializable `meta` as `step`, waiting until written.

        Waiting makes a checkpoint that exists on disk complete, so an interruption right
        after `save` returns can always resume from it.

        A step orbax declines to save (it holds this or a later step: another process
        writes the same phase) is reported with a warning, not silently skipped.
        """
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_keys_to_data(state)),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        self._manager.wait_until_finished()
        if not saved:
            logging.warning(
                "checkpoint %s was not saved: orbax already holds step %s in %s (is another "
                "process training this phase in the same folder?)",
                self.step_dir(step),
                self.latest_step(),
                self.directory,
            )

    def restore(self, step: int, template: PyTree) -> tuple[PyTree, dict]:
        """Restores step `step` into the structure, dtypes and shardings of `template`."""
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
            _keys_to_data(template),
        )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        return _data_to_keys(restored["state"], template), dict(restored["meta"])

    def restore_latest(
        self, template: PyTree, check: Callable[[int, dict], None] | None = None
    ) -> tuple[int, PyTree, dict] | None:
        """Restores the newest step that can be restored, falling back past damaged ones.

        A step that fails (orbax or tensorstore cannot read it, its metadata is not valid
        JSON, or `check` rejects its metadata) is reported with a `logging.warning` naming
        its folder, and the next older kept step is tried. Once one restores, the damaged
        newer step folders are moved to `<directory>.damaged/` (nothing is deleted), so the
        phase can save those steps again.

        Args:
            template: the pytree to restore into (see `restore`).
            check: optional `check(step, meta)` raising an exception if `meta` is not what a
                complete checkpoint of `step` holds.

        Returns:
            (step, state, meta) of the restored step, or None if there are no checkpoints.

        Raises:
            CheckpointError: there are checkpoints but none can be restored; the message
                names the folder to move away (jaxbd never deletes it).
        """
        steps = self.all_steps()
        damaged: list[int] = []
        errors: list[str] = []
        for step in reversed(steps):
            try:
                state, meta = self.restore(step, template)
                if check is not None:
                    check(step, meta)
            except Exception as e:  # orbax raises anything: ValueError, OSError, ...
                damaged.append(step)
                errors.append(_short(e))
                logging.warning(
                    "checkpoint %s cannot be restored (%s); trying the previous one",
                    self.step_dir(step),
                    errors[-1],
                )
                self._reopen()
                continue
            if damaged:
                self._set_aside(damaged, step)
            return step, state, meta
        if not steps:
            return None
        raise CheckpointError(
            f"no checkpoint in {self.directory} can be restored (steps {steps}; newest: "
            f"{errors[0]}): move {self.directory} away (jaxbd never deletes it) and rerun to "
            "retrain this phase from its start."
        )

    def delete_all(self) -> None:
        """Deletes every saved step (a superseded mid-epoch checkpoint); with several
        processes, every process calls it (orbax deletes once and waits for all)."""
        for step in self.all_steps():
            self._manager.delete(step)

    def _set_aside(self, steps: list[int], restored: int) -> None:
        """Moves damaged step folders to `<directory>.damaged/<step>[-n]` (process 0 moves
        them; every process then reopens its manager on the new list of steps)."""
        if distributed.is_writer():
            self._move_aside(steps, restored)
        distributed.sync(f"jaxbd:set_aside:{self.directory}")
        self._reopen()

    def _move_aside(self, steps: list[int], restored: int) -> None:
        aside = self.directory + DAMAGED_SUFFIX
        os.makedirs(aside, exist_ok=True)
        for step in steps:
            target, n = os.path.join(aside, str(step)), 0
            while os.path.exists(target):
                n += 1
                target = os.path.join(aside, f"{step}-{n}")
            os.rename(self.step_dir(step), target)
            logging.warning(
                "checkpoint %s is damaged: resumed from step %d instead, and moved the damaged "
                "folder to %s (not deleted; remove it yourself once inspected)",
                self.step_dir(step),
                restored,
                target,
            )

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
