"""The Parameter-Controlled Backdoor's training loop: clean steps alternating with
update-masked poisoned steps (Lukas & Kerschbaum 2023, "Pick your Poison").

A training-time attack runs the victim's training, so its epoch's schedule lives here, with
the attack, and runs on the engine's one loop (`jaxbd.train.loop`). It is written from the
engine's public pieces: the plain compiled steps (`Trainer.compiled_steps(PLAIN)`, the very
function `Trainer.train_epoch` runs) and one more step variant (`poisoned_step_variant`)
whose batches mix poison-pool and clean rows, whose trigger may be stamped after
augmentation, and whose update is restricted by an update mask. Both compiled functions are
reused by every later epoch with the same shapes, including with a new update mask.

The epoch's batches are the usual shuffled batches of the clean data, and every
`poison_every`-th of them becomes a poisoned step: its first k examples are replaced by
examples of the poison pool, and the step updates only the parameters the update mask
selects. `make_epoch_fn` adapts this to the `EpochFn` interface that a training phase runs.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.attacks import pcb_stats
from jaxbd.attacks.pcb_stats import AlternatingEpochStats
from jaxbd.train import PLAIN, DeviceData, EpochProgress, EpochStats, StepVariant, TrainState, loop
from jaxbd.train.epoch_order import largest_divisor_at_most
from jaxbd.train.step import BatchTransform

if TYPE_CHECKING:
    from jaxbd.attacks.pcb import ParameterControlledBackdoor
    from jaxbd.data import Dataset
    from jaxbd.train import Trainer


def alternating_schedule(steps: int, poison_every: int) -> np.ndarray:
    """bool[steps]: which steps of an alternating epoch are poisoned.

    Step i (0-based, counted within the epoch) is poisoned iff `i % poison_every == 0`: the
    epoch starts with a poisoned step and then has `poison_every - 1` clean steps after each
    one. `poison_every=2` gives poisoned, clean, poisoned, clean, ... — the 1:1 alternation
    of the Parameter-Controlled Backdoor's reference code (`step % 2 == 0` is poisoned);
    `poison_every=1` poisons every step.

    Args:
        steps: steps in the epoch.
        poison_every: the period, >= 1.

    Returns:
        The schedule; `ceil(steps / poison_every)` entries are True.
    """
    if isinstance(poison_every, bool) or not isinstance(poison_every, int) or poison_every < 1:
        raise ValueError(f"poison_every must be an int >= 1, got {poison_every!r}")
    return np.arange(steps) % poison_every == 0


def dispatch_plan(poisoned: np.ndarray, steps_per_call: int) -> list[tuple[bool, int, int]]:
    """How an alternating epoch is dispatched: runs of same-kind steps, each in equal calls.

    Every run of consecutive clean (or poisoned) steps is cut into calls of `chunk` steps,
    where `chunk` is the same for every run of that kind — the largest divisor of all their
    lengths that is at most `steps_per_call` — so an epoch, and every later one, uses one
    compiled shape per kind.

    Args:
        poisoned: bool[steps], e.g. `alternating_schedule(steps, poison_every)`.
        steps_per_call: the trainer's limit (1 on the CPU: no scan).

    Returns:
        `(poisoned, chunk, calls)` per run, in step order; `chunk · calls` is the run length.
    """
    runs = [(bool(kind), len(list(group))) for kind, group in itertools.groupby(poisoned)]
    lengths: dict[bool, list[int]] = {}
    for kind, length in runs:
        lengths.setdefault(kind, []).append(length)
    chunk = {
        kind: largest_divisor_at_most(math.gcd(*ns), steps_per_call) for kind, ns in lengths.items()
    }
    return [(kind, chunk[kind], length // chunk[kind]) for kind, length in runs]


@functools.cache
def poisoned_step_variant(
    update_mask_mode: str, poison_transform: BatchTransform | None, k: int
) -> StepVariant:
    """The step variant of a poisoned step (one per mode, transform and poison count, so a
    later epoch reuses its compiled function).

    Its data is the pair `(clean, poison)` of `DeviceData` and its rows the pair
    `(fill int32[B-k], idx int32[k])`: the batch is the k poison examples followed by the
    B-k clean ones. With a `poison_transform`, the k poison rows are transformed after
    augmentation (the trigger stamped where the test images will have it).
    """

    def gather(data, rows, mesh=None):
        clean, poison = data
        fill, idx = rows
        images = jnp.concatenate([poison.images[idx], clean.images[fill]])
        labels = jnp.concatenate([poison.labels[idx], clean.labels[fill]])
        weights = jnp.concatenate([poison.weights[idx], clean.weights[fill]])
        return images, labels, weights

    after_augment = None
    if poison_transform is not None:

        def after_augment(key, images, labels):  # the poison rows lead the batch
            head, head_labels = poison_transform(key, images[:k], labels[:k])
            images = jnp.concatenate([head.astype(images.dtype), images[k:]])
            return images, jnp.concatenate([head_labels.astype(labels.dtype), labels[k:]])

    return StepVariant(
        gather=gather, after_augment=after_augment, update_mask_mode=update_mask_mode
    )


def train_epoch_alternating(
    trainer: Trainer,
    state: TrainState,
    clean_data: DeviceData,
    poison_data: DeviceData,
    key: jax.Array,
    *,
    update_mask,
    poison_every: int = 2,
    poison_batch_size: int | None = None,
    update_mask_mode: Literal["freeze", "gradient"] = "freeze",
    poison_transform: BatchTransform | None = None,
    indices: jax.Array | None = None,
    desc: str = "train+poison",
    resume: EpochProgress | None = None,
    preemptible: bool = False,
) -> tuple[TrainState, AlternatingEpochStats]:
    """Runs one epoch alternating clean steps with update-masked poisoned steps.

    The epoch is `Trainer.train_epoch`'s: a random order of the clean examples (`indices`,
    default all) cut into `steps_per_epoch(num)` full batches, so the learning-rate schedule and
    the epoch length are those of plain training. Batch i is a *poisoned* step when
    `alternating_schedule(steps, poison_every)[i]`: its first `poison_batch_size`
    examples are replaced by examples of `poison_data` (a fresh random order of it each
    epoch, cycled as often as needed), and the step updates only the coordinates
    `update_mask` selects (`make_train_step`'s update mask, with `update_mask_mode`).
    Every other batch is a clean step on all parameters. Pruning (`state.mask`) holds in
    both kinds; BatchNorm statistics are updated by both (they are not parameters).

    Clean steps run through the compiled function `Trainer.train_epoch` uses (on the CPU one
    step per call; on accelerators runs of clean steps are
    scanned), poisoned steps through one more compiled function; both are reused by
    every later epoch with the same shapes, including with a new update mask.

    Args:
        trainer: the engine (its compiled steps, batch size, mesh and progress flag).
        state: the train state; donated.
        clean_data: the on-device clean training set (its `weights` apply as usual).
        poison_data: the on-device poisoned examples: triggered images labelled with
            what the attacker wants (e.g. `ParameterControlledBackdoor.poison_source`
            put on the devices with `put`); its weights apply to them.
        key: PRNG key of this epoch's shuffles.
        update_mask: float32 (or bool) pytree like `state.params`: 1 where a poisoned step
            may update a parameter. Replicated over the mesh here (a no-op when it
            already is, e.g. after `replicate`), so it never causes a recompile.
        poison_every: every `poison_every`-th step is poisoned, starting with the first
            (2: the 1:1 alternation of the reference code; 1: every step).
        poison_batch_size: triggered examples per poisoned batch, in [1, batch_size];
            the rest of the batch keeps its clean examples. None: the whole batch.
        update_mask_mode: "freeze" (excluded parameters and their momentum stay exactly
            as they are during a poisoned step) or "gradient" (only their gradient is
            masked, as in the reference PyTorch code); see `make_train_step`.
        poison_transform: optional `fn(key, images uint8[k, H, W, 3], labels int32[k])
            -> (images, labels)` applied to the k poison examples of each poisoned batch
            *after* augmentation (e.g. an attack's `train_fn`, stamping its trigger where
            the test images will have it); `poison_data` then holds the clean source
            images. None: `poison_data` is used as it is (already transformed, then
            augmented like every example). The function is a static part of the
            compiled step: pass the same object every epoch.
        indices: optional int32[K] device array of the clean examples making up the
            epoch (a coreset).
        desc: progress-bar label.
        resume, preemptible: as for `Trainer.train_epoch` (the done part is
            `AlternatingEpochStats.progress`, see `jaxbd.attacks.pcb_stats`).

    Returns:
        (new state, statistics of the epoch).

    Raises:
        ValueError: for fewer clean examples than one batch, an empty `poison_data`, a
            bad `poison_every`, `poison_batch_size` or `update_mask_mode`, or an update
            mask whose structure differs from the parameters'.
    """
    num = len(clean_data) if indices is None else int(indices.shape[0])
    steps = trainer.steps_per_epoch(num)
    if steps == 0:
        raise ValueError(
            f"{num} training examples are fewer than one batch of {trainer.batch_size}"
        )
    if len(poison_data) == 0:
        raise ValueError("poison_data is empty")
    k = trainer.batch_size if poison_batch_size is None else poison_batch_size
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= trainer.batch_size:
        raise ValueError(
            f"poison_batch_size must be an int in [1, batch_size={trainer.batch_size}], "
            f"got {poison_batch_size!r}"
        )
    poisoned = alternating_schedule(steps, poison_every)
    if jax.tree.structure(update_mask) != jax.tree.structure(state.params):
        raise ValueError(
            "update_mask must have the structure of the parameters: got "
            f"{jax.tree.structure(update_mask)}, expected {jax.tree.structure(state.params)}"
        )
    poison_steps_fn = trainer.compiled_steps(
        poisoned_step_variant(update_mask_mode, poison_transform, k)
    )
    clean_steps_fn = trainer.compiled_steps(PLAIN)
    update_mask = trainer.replicate(update_mask)

    clean_order, fill_order, poison_order = _alternating_order(
        key, num, steps, trainer.batch_size, poison_every, len(poison_data), k
    )
    if indices is not None:
        indices = jnp.asarray(indices, jnp.int32)
        clean_order, fill_order = indices[clean_order], indices[fill_order]

    done = 0 if resume is None else resume.steps
    if not 0 <= done < steps:
        raise ValueError(f"resume.steps={done} is not a step inside an epoch of {steps}")
    calls = _calls_after(poisoned, trainer.steps_per_call, done)
    ran = loop.run_calls(
        state,
        _alternating_calls(
            calls,
            poisoned[:done],
            clean_steps_fn,
            poison_steps_fn,
            (clean_data, poison_data),
            (clean_order, fill_order, poison_order),
            update_mask,
        ),
        total=steps,
        initial=done,
        desc=desc,
        progress=trainer.progress,
        images_per_step=trainer.batch_size,
        preemptible=preemptible,
    )
    kinds = [kind for kind, _ in calls[: len(ran.outs)]]
    progress = None
    if resume is None and not ran.stopped:
        clean_out = [o for o, kind in zip(ran.outs, kinds, strict=True) if not kind]
        poison_out = [o for o, kind in zip(ran.outs, kinds, strict=True) if kind]
        figures = pcb_stats.device_summary(clean_out, poison_out, ran.outs[-1].lr[-1], k)
    else:
        figures, progress = pcb_stats.done_part(
            resume, ran.outs, kinds, poisoned, k, trainer.batch_size
        )
    (clean_loss, clean_acc), (poison_loss, poison_acc), lr = figures
    seconds = time.perf_counter() - ran.started
    was_poisoned = poisoned[: ran.done]
    stats = AlternatingEpochStats(
        clean_loss=float(clean_loss),
        clean_accuracy=float(clean_acc),
        poison_loss=float(poison_loss),
        poison_accuracy=float(poison_acc),
        lr=float(lr),
        clean_steps=int((~was_poisoned).sum()),
        poison_steps=int(was_poisoned.sum()),
        seconds=seconds,
        images_per_second=(ran.done - done) * trainer.batch_size / seconds,
        progress=progress if ran.stopped else None,
    )
    return ran.state, stats


def _calls_after(poisoned: np.ndarray, steps_per_call: int, done: int) -> list[tuple[bool, int]]:
    """(poisoned, steps) of each call of an epoch after its first `done` steps: those of the
    epoch's `dispatch_plan`, or, resumed at a step that is no call boundary of it (another
    `steps_per_call`), a plan of the steps left."""
    calls = [(kind, c) for kind, c, n in dispatch_plan(poisoned, steps_per_call) for _ in range(n)]
    ends = np.cumsum([0] + [c for _, c in calls])
    if done in ends:
        return calls[int(np.flatnonzero(ends == done)[0]) :]
    rest = dispatch_plan(poisoned[done:], steps_per_call)
    return [(kind, c) for kind, c, n in rest for _ in range(n)]


def _alternating_calls(
    calls, done_kinds, clean_fn, poison_fn, data, orders, update_mask
) -> Iterator[loop.Call]:
    """The `calls` of an alternating epoch, after the done steps of kinds `done_kinds`:
    clean steps on the clean data, poisoned steps on the pair `data = (clean, poison)` with
    the update mask."""
    clean_data, _ = data
    clean_order, fill_order, poison_order = orders
    next_poison = int(done_kinds.sum())
    next_clean = len(done_kinds) - next_poison
    for kind, c in calls:
        if kind:
            rows = slice(next_poison, next_poison + c)
            yield loop.Call(
                poison_fn, (data, (fill_order[rows], poison_order[rows]), update_mask), c
            )
            next_poison += c
        else:
            rows = slice(next_clean, next_clean + c)
            yield loop.Call(clean_fn, (clean_data, clean_order[rows], None, None), c)
            next_clean += c


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6))
def _alternating_order(
    key: jax.Array,
    num: int,
    steps: int,
    batch_size: int,
    poison_every: int,
    num_poison: int,
    poison_batch_size: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The example order of an alternating epoch.

    Returns:
        clean: int32[clean steps, batch_size], positions in range(num) of the clean steps;
        fill: int32[poisoned steps, batch_size - k], the clean examples the poisoned steps
            keep (the tail of their batch of the epoch's permutation);
        poison: int32[poisoned steps, k], indices into the poison data: consecutive
            random permutations of range(num_poison), so each poison example is used once
            before any is reused.
    """
    order_key, poison_key = jax.random.split(key)
    # Permutations as argsorts of random 32-bit words: one sort, which compiles several times
    # faster on the CPU than `jax.random.permutation`'s rounds; ties (about num²/2³³ of them)
    # bias the order negligibly.
    order = jnp.argsort(jax.random.bits(order_key, (num,)))[: steps * batch_size]
    order = order.reshape(steps, batch_size)
    poisoned = alternating_schedule(steps, poison_every)
    clean = order[np.flatnonzero(~poisoned)]
    fill = order[np.flatnonzero(poisoned), poison_batch_size:]
    needed = int(poisoned.sum()) * poison_batch_size
    bits = jax.random.bits(poison_key, (math.ceil(needed / num_poison), num_poison))
    poison = jnp.argsort(bits, axis=-1).reshape(-1)[:needed].reshape(-1, poison_batch_size)
    return clean.astype(jnp.int32), fill.astype(jnp.int32), poison.astype(jnp.int32)


class _EpochFn:
    """A PCB run's `EpochFn`: one alternating epoch, with the run's pool and update mask.
    Resumable: it takes `resume` and `preemptible` as `Trainer.train_epoch` does."""

    resumable = True

    def __init__(self, attack: ParameterControlledBackdoor, trainer: Trainer, pool: DeviceData):
        self.attack, self.trainer, self.pool = attack, trainer, pool
        self.update_mask = trainer.replicate(attack.update_mask)

    def __call__(
        self,
        state,
        data,
        key,
        *,
        indices=None,
        desc="train",
        record_presentations=False,
        resume=None,
        preemptible=False,
    ):
        attack = self.attack
        state, stats = train_epoch_alternating(
            self.trainer,
            state,
            data,
            self.pool,
            key,
            update_mask=self.update_mask,
            poison_every=attack.poison_every,
            poison_batch_size=attack.poison_batch_size(self.trainer.batch_size),
            update_mask_mode=attack.update_mask_mode,
            poison_transform=(
                attack.trigger.train_fn if attack.trigger_stage == "after_augment" else None
            ),
            indices=indices,
            desc=desc,
            resume=resume,
            preemptible=preemptible,
        )
        # Under `EpochStats`'s names: the clean steps' loss and accuracy, with the poisoned
        # steps' figures for the log.
        epoch_stats = EpochStats(
            loss=stats.clean_loss,
            accuracy=stats.clean_accuracy,
            lr=stats.lr,
            steps=stats.clean_steps + stats.poison_steps,
            seconds=stats.seconds,
            images_per_second=stats.images_per_second,
            extra={
                "poison_loss": stats.poison_loss,
                "poison_accuracy": stats.poison_accuracy,
                "poison_steps": stats.poison_steps,
            },
            progress=stats.progress,
        )
        return state, epoch_stats, None


def make_epoch_fn(
    attack: ParameterControlledBackdoor,
    trainer: Trainer,
    train_set: Dataset,
    *,
    key: jax.Array,
    fraction: float,
    exclude_target: bool,
) -> Callable:
    """The `EpochFn` of a PCB run: alternating epochs drawing poisoned steps from a pool of
    `fraction` of the training images (`attack.poison_source`), put on the devices once.

    Args:
        attack: the attack.
        trainer: the engine.
        train_set: the clean training set.
        key: the pool's PRNG stream.
        fraction: in (0, 1], of the candidate images copied into the pool.
        exclude_target: only copy images whose label is not the target.

    Returns:
        `epoch_fn(state, data, key, *, indices, desc, record_presentations) -> (state,
        EpochStats, None)`, like `Trainer.train_epoch`.
    """
    pool = attack.poison_source(key, train_set, fraction=fraction, exclude_target=exclude_target)
    return _EpochFn(attack, trainer, trainer.put(pool.images, pool.labels))
