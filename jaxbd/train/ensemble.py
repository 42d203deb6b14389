"""M models trained at once: `jax.vmap` of the train steps over a leading member axis.

Member m trains exactly as `Trainer.train_epoch` would train it alone (its own shuffle,
augmentation stream, initialization and schedule), but every step is one batched computation
for all members, which fills an accelerator that one small model leaves idle (Paul et al.
train EL2N ensembles this way). Members share one dataset (an ensemble) or each have their
own of one size (replicate seeds of a grid), with a shared or per-member subset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jaxbd.train import loop
from jaxbd.train import stats as stats_lib
from jaxbd.train.device_data import DeviceData
from jaxbd.train.epoch_order import epoch_order
from jaxbd.train.state import TrainState
from jaxbd.train.stats import EpochProgress, EpochStats, Presentations
from jaxbd.train.step import PLAIN

if TYPE_CHECKING:
    from jaxbd.train.trainer import Trainer


def train_epoch_ensemble(
    trainer: Trainer,
    states: TrainState,
    data: DeviceData,
    keys: jax.Array,
    *,
    indices: jax.Array | None = None,
    desc: str = "train ensemble",
    record_presentations: bool = False,
    resume: Sequence[EpochProgress] | None = None,
    preemptible: bool = False,
) -> tuple[TrainState, list[EpochStats], list[Presentations] | None]:
    """One epoch of M models at once (see the module docstring).

    Args:
        trainer: the engine (its compiled steps, batch size and mesh).
        states: member states stacked along axis 0 (`Trainer.stack`); donated.
        data: the on-device dataset shared by all members (images uint8[N, H, W, 3]),
            or one per member stacked along axis 0 (uint8[M, N, H, W, 3]).
        keys: M shuffle keys, stacked (`jnp.stack` of typed keys).
        indices: optional examples making up each member's epoch: int32[K] shared, or
            int32[M, K] one subset per member.
        desc: progress-bar label.
        record_presentations: also return each member's presentations.
        resume: the members' done parts of this epoch (each member's `progress` of a call
            that stopped in it, restored with the stacked state): the epoch continues at
            their step, and its statistics are those of the whole epoch.
        preemptible: stop after the current call at a preemption request, as
            `Trainer.train_epoch` does; each member's stats then carry its done part as
            `progress`. Not with `record_presentations`.

    Returns:
        (new stacked states, per-member statistics, per-member presentations or None).
    """
    members = int(keys.shape[0])
    own_data = data.labels.ndim == 2
    if own_data and data.labels.shape[0] != members:
        raise ValueError(f"{members} members but {data.labels.shape[0]} stacked datasets")
    size = data.labels.shape[-1]
    if indices is not None:
        indices = jnp.asarray(indices, jnp.int32)
        if indices.ndim == 2 and indices.shape[0] != members:
            raise ValueError(f"{members} members but {indices.shape[0]} index sets")
    num = size if indices is None else int(indices.shape[-1])
    steps = trainer.steps_per_epoch(num)
    if steps == 0:
        raise ValueError(
            f"{num} training examples are fewer than one batch of {trainer.batch_size}"
        )
    done = _resumed_steps(resume, members, steps, record_presentations)
    chunk = loop.chunk_size(steps, done, trainer.steps_per_call)
    keys = trainer.global_value(keys)
    if indices is not None:
        indices = trainer.global_value(indices)
    orders = jnp.stack(
        [epoch_order(keys[m], num, steps, trainer.batch_size) for m in range(members)]
    )
    if indices is not None and indices.ndim == 2:
        orders = jax.vmap(lambda subset, order: subset[order])(indices, orders)
    elif indices is not None:
        orders = indices[orders]
    steps_fn = trainer.compiled_steps(PLAIN, "own" if own_data else "shared")
    ran = loop.run_calls(
        states,
        loop.chunked(steps_fn, data, orders, start=done, stop=steps, chunk=chunk, axis=1),
        total=steps,
        initial=done,
        desc=desc,
        progress=trainer.progress,
        images_per_step=members * trainer.batch_size,
        preemptible=preemptible and not record_presentations,
    )
    stats = stats_lib.member_stats(
        ran.outs, ran.done, ran.done - done, ran.started, trainer.batch_size, resume
    )
    if ran.stopped:  # the done parts, for the checkpoint
        progress = stats_lib.member_progress(resume, ran.outs, ran.done)
        return (
            ran.state,
            [s._replace(progress=p) for s, p in zip(stats, progress, strict=True)],
            None,
        )
    presentations = None
    if record_presentations:
        correct = jnp.concatenate([o.correct for o in ran.outs], axis=1)  # [M, steps, B]
        presentations = [Presentations(orders[m], correct[m]) for m in range(members)]
    return ran.state, stats, presentations


def _resumed_steps(
    resume: Sequence[EpochProgress] | None, members: int, steps: int, record: bool
) -> int:
    """The steps the members' done parts cover (one count for all), checked."""
    if resume is None:
        return 0
    if len(resume) != members or len({p.steps for p in resume}) != 1:
        raise ValueError(f"resume needs one done part per member ({members}), all at one step")
    done = resume[0].steps
    if not 0 <= done < steps:
        raise ValueError(f"resume.steps={done} is not a step inside an epoch of {steps}")
    if done and record:
        raise ValueError("an epoch resumed mid-way has no presentations of its done part")
    return done
