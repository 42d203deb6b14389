"""The epoch loop: compiled steps, on-device data and shuffling, progress and timing.

A `Trainer` owns the compiled functions for one model, optimizer and device mesh, and is
reused across every phase of an experiment (pretraining, training on a coreset, IMP rounds):
the data, the epoch's example indices, the loss weights, the mask and the schedule are all
arguments, so a new phase compiles nothing new as long as the shapes stay the same.

The dataset is placed on the devices once as uint8. Each epoch draws a permutation on the
device and runs `steps_per_call` train steps per jitted call (a `lax.scan`), so the host only
dispatches a few calls per epoch and reads metrics back once per call, one call late, so it
never stalls the device. On the CPU the default is one step per call without `scan`: XLA:CPU
runs convolutions inside a loop body an order of magnitude slower than at the top level
(measured: 1.66 s vs 0.11 s per ResNet-18 step at width 8, batch 64), and dispatch overhead is
negligible there.

`train_epoch_alternating` runs the epochs of a training-time attack (the Parameter-Controlled
Backdoor, `jaxbd.attacks.pcb`): the epoch's batches are the usual shuffled batches of the
clean data, and every `poison_every`-th of them becomes a poisoned step — some examples
replaced by triggered ones, the update restricted to the parameters an update mask selects.
Its clean steps are the same compiled function as `train_epoch`'s; its poisoned steps are one
more compiled function, reused across epochs and across new masks.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Sequence
from typing import Literal, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxbd.train import sharding
from jaxbd.train.optimizer import sgd_direction
from jaxbd.train.schedule import CosineSchedule
from jaxbd.train.state import TrainState, create_train_state, init_variables
from jaxbd.train.step import (
    UPDATE_MASK_MODES,
    BatchTransform,
    make_predict_step,
    make_train_step,
)


@flax.struct.dataclass
class DeviceData:
    """A dataset resident on the devices (replicated over the mesh).

    Attributes:
        images: uint8[N, H, W, 3].
        labels: int32[N].
        weights: float32[N] per-example loss weights (1 for plain training; 0 excludes).
    """

    images: jax.Array
    labels: jax.Array
    weights: jax.Array

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class EpochStats(NamedTuple):
    """Host-side summary of one epoch.

    Attributes:
        loss: mean training loss over the epoch's steps.
        accuracy: fraction of augmented training views classified correctly.
        lr: learning rate of the last step.
        steps: steps taken.
        seconds: wall time of the epoch (dispatch to the last result).
        images_per_second: steps · batch_size / seconds.
    """

    loss: float
    accuracy: float
    lr: float
    steps: int
    seconds: float
    images_per_second: float


class AlternatingEpochStats(NamedTuple):
    """Host-side summary of one alternating (clean / poisoned) epoch.

    Attributes:
        clean_loss: mean training loss over the clean steps (nan if there were none).
        clean_accuracy: fraction of the clean steps' augmented views classified correctly.
        poison_loss: mean training loss over the poisoned steps (whole batches, including
            their clean examples).
        poison_accuracy: fraction of the poisoned steps' *triggered* examples classified as
            their (target) label — the attack's success on its own training views.
        lr: learning rate of the last step.
        clean_steps: clean steps taken.
        poison_steps: poisoned steps taken.
        seconds: wall time of the epoch.
        images_per_second: (clean_steps + poison_steps) · batch_size / seconds.
    """

    clean_loss: float
    clean_accuracy: float
    poison_loss: float
    poison_accuracy: float
    lr: float
    clean_steps: int
    poison_steps: int
    seconds: float
    images_per_second: float


class Presentations(NamedTuple):
    """Per-presentation correctness of one epoch, on the device (for forgetting scores).

    Attributes:
        indices: int32[steps, B] example index of each presentation, in step order.
        correct: bool[steps, B] whether it was classified correctly in that step.
    """

    indices: jax.Array
    correct: jax.Array


def largest_divisor_at_most(n: int, limit: int) -> int:
    """The largest d ≤ limit dividing n (so every call of an epoch has the same shape)."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


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


class Trainer:
    """Compiled training and inference for one model, optimizer and mesh.

    Args:
        model: flax module returning `(logits, features)`.
        mesh: 1-D device mesh (see `sharding.make_mesh`).
        batch_size: global training batch size; must divide evenly over the devices.
        eval_batch_size: global inference batch size; must divide evenly over the devices.
        momentum: SGD momentum.
        weight_decay: L2 coefficient added to the gradient (PyTorch convention).
        mean: per-channel normalization mean.
        std: per-channel normalization standard deviation.
        crop_padding: random-crop zero padding (0 disables).
        flip: random horizontal flips.
        steps_per_call: at most this many steps per jitted call; None: 1 on the CPU (no
            scan, see the module docstring), 32 on accelerators.
        progress: show a progress bar per epoch.
    """

    def __init__(
        self,
        model: nn.Module,
        mesh: Mesh,
        *,
        batch_size: int,
        eval_batch_size: int = 512,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int = 4,
        flip: bool = True,
        steps_per_call: int | None = None,
        progress: bool = True,
    ):
        sharding.check_batch_size(batch_size, mesh, "batch_size")
        sharding.check_batch_size(eval_batch_size, mesh, "eval_batch_size")
        if steps_per_call is None:
            steps_per_call = 1 if jax.default_backend() == "cpu" else 32
        if steps_per_call < 1:
            raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
        self.model = model
        self.mesh = mesh
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.steps_per_call = steps_per_call
        self.progress = progress
        self.tx = sgd_direction(momentum, weight_decay)
        self._replicated = sharding.replicated(mesh)
        self._make_train_step = functools.partial(
            make_train_step,
            model,
            self.tx,
            mean=mean,
            std=std,
            crop_padding=crop_padding,
            flip=flip,
            mesh=mesh,
        )
        train_step = self._make_train_step()
        self.train_step = train_step
        # Compiled poisoned (update-masked) steps, one per update-mask mode, built on first use
        # so plain training compiles nothing more than before.
        self._poison_steps: dict[tuple, jax.stages.Wrapped] = {}

        def gathered_step(state, data: DeviceData, batch_idx):
            batch_idx = jax.lax.with_sharding_constraint(batch_idx, sharding.batch_sharded(mesh))
            return train_step(
                state, data.images[batch_idx], data.labels[batch_idx], data.weights[batch_idx]
            )

        def train_steps(state, data: DeviceData, idx):
            if idx.shape[0] == 1:  # No loop: see the module docstring.
                state, out = gathered_step(state, data, idx[0])
                return state, jax.tree.map(lambda x: x[None], out)
            return jax.lax.scan(lambda s, i: gathered_step(s, data, i), state, idx)

        # The state is donated: its buffers are reused for the new state.
        self._train_steps = jax.jit(train_steps, donate_argnums=0, out_shardings=self._replicated)
        # Ensembles (a leading member axis on the state and the batch indices) train in one
        # call with vmap; compiled on first use.
        self._ensemble_steps = jax.jit(
            jax.vmap(train_steps, in_axes=(0, None, 0)),
            donate_argnums=0,
            out_shardings=self._replicated,
        )
        # ... and when every member has its own dataset (replicate seeds of a grid, each
        # with its own poisoned set and selection): the data gains the member axis too.
        self._group_steps = jax.jit(
            jax.vmap(train_steps, in_axes=(0, 0, 0)),
            donate_argnums=0,
            out_shardings=self._replicated,
        )
        self._predict = jax.jit(
            make_predict_step(model, mean=mean, std=std, mesh=mesh),
            out_shardings=self._replicated,
        )

    # -- state and data ------------------------------------------------------------------

    def init_state(
        self,
        key: jax.Array,
        image_shape: tuple[int, int, int],
        schedule: CosineSchedule,
        *,
        rng: jax.Array,
        mask=None,
    ) -> TrainState:
        """A fresh, replicated train state with newly initialized model variables."""
        params, batch_stats = init_variables(self.model, key, image_shape)
        return self.new_state(params, batch_stats, schedule, rng=rng, mask=mask)

    def new_state(self, params, batch_stats, schedule, *, rng, mask=None) -> TrainState:
        """A replicated train state from given variables (fresh optimizer, step 0)."""
        state = create_train_state(params, batch_stats, self.tx, schedule, rng, mask)
        return jax.device_put(state, self._replicated)

    def replicate(self, tree):
        """Copies arrays (e.g. a test set) to every device of the mesh."""
        return jax.device_put(tree, self._replicated)

    def put(self, images: np.ndarray, labels: np.ndarray, weights=None) -> DeviceData:
        """Copies a dataset to the devices once (replicated).

        Args:
            images: uint8[N, H, W, 3].
            labels: int[N].
            weights: optional float[N] loss weights (ones when None).
        """
        n = len(labels)
        weights = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
        if weights.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {weights.shape}")
        data = DeviceData(
            images=np.asarray(images, np.uint8),
            labels=np.asarray(labels, np.int32),
            weights=weights,
        )
        return jax.device_put(data, self._replicated)

    # -- training ----------------------------------------------------------------------

    def steps_per_epoch(self, num_examples: int) -> int:
        """Full batches per epoch; the remainder (< batch_size, different each epoch) is
        dropped so every step has the same shape and BatchNorm sees only real examples."""
        return num_examples // self.batch_size

    def train_epoch(
        self,
        state: TrainState,
        data: DeviceData,
        key: jax.Array,
        *,
        indices: jax.Array | None = None,
        desc: str = "train",
        record_presentations: bool = False,
    ) -> tuple[TrainState, EpochStats, Presentations | None]:
        """Runs one epoch over `indices` (default: every example) in a random order.

        Args:
            state: the train state; donated (do not use it after the call).
            data: the on-device dataset.
            key: PRNG key of this epoch's shuffle.
            indices: optional int32[K] device array of the examples making up the epoch
                (a coreset); their loss weights come from `data.weights`.
            desc: progress-bar label.
            record_presentations: also return per-presentation correctness.

        Returns:
            (new state, epoch statistics, presentations or None).
        """
        num = len(data) if indices is None else int(indices.shape[0])
        steps = self.steps_per_epoch(num)
        if steps == 0:
            raise ValueError(
                f"{num} training examples are fewer than one batch of {self.batch_size}"
            )
        chunk = largest_divisor_at_most(steps, self.steps_per_call)
        order = _epoch_order(key, num, steps, self.batch_size)
        if indices is not None:
            order = jnp.asarray(indices, jnp.int32)[order]

        losses, corrects, lrs = [], [], []
        bar = tqdm(total=steps, desc=desc, unit="step", disable=not self.progress, leave=False)
        start = time.perf_counter()
        for first in range(0, steps, chunk):
            state, out = self._train_steps(state, data, order[first : first + chunk])
            losses.append(out.loss)
            corrects.append(out.correct)
            lrs.append(out.lr)
            if self.progress:
                # Read the previous call's loss: it is finished, so this never stalls the
                # device, which is already running the call just dispatched.
                shown = losses[-2] if len(losses) > 1 else None
                postfix = {}
                if shown is not None:
                    postfix["loss"] = f"{float(jnp.mean(shown)):.4f}"
                elapsed = time.perf_counter() - start
                postfix["img/s"] = f"{(first + chunk) * self.batch_size / elapsed:.0f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(chunk)
        loss = jnp.mean(jnp.concatenate(losses))
        correct = jnp.concatenate(corrects)
        accuracy = jnp.mean(correct)
        loss, accuracy, lr = jax.device_get((loss, accuracy, lrs[-1][-1]))
        seconds = time.perf_counter() - start
        bar.close()
        stats = EpochStats(
            loss=float(loss),
            accuracy=float(accuracy),
            lr=float(lr),
            steps=steps,
            seconds=seconds,
            images_per_second=steps * self.batch_size / seconds,
        )
        presentations = Presentations(order, correct) if record_presentations else None
        return state, stats, presentations

    def train_epoch_alternating(
        self,
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
    ) -> tuple[TrainState, AlternatingEpochStats]:
        """Runs one epoch alternating clean steps with update-masked poisoned steps.

        The epoch is `train_epoch`'s: a random order of the clean examples (`indices`, default
        all) cut into `steps_per_epoch(num)` full batches, so the learning-rate schedule and
        the epoch length are those of plain training. Batch i is a *poisoned* step when
        `alternating_schedule(steps, poison_every)[i]`: its first `poison_batch_size`
        examples are replaced by examples of `poison_data` (a fresh random order of it each
        epoch, cycled as often as needed), and the step updates only the coordinates
        `update_mask` selects (`make_train_step`'s update mask, with `update_mask_mode`).
        Every other batch is a clean step on all parameters. Pruning (`state.mask`) holds in
        both kinds; BatchNorm statistics are updated by both (they are not parameters).

        Clean steps run through the compiled function `train_epoch` uses (on the CPU one
        step per call, see the module docstring; on accelerators runs of clean steps are
        scanned), poisoned steps through one more compiled function; both are reused by
        every later epoch with the same shapes, including with a new update mask.

        Args:
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

        Returns:
            (new state, statistics of the epoch).

        Raises:
            ValueError: for fewer clean examples than one batch, an empty `poison_data`, a
                bad `poison_every`, `poison_batch_size` or `update_mask_mode`, or an update
                mask whose structure differs from the parameters'.
        """
        num = len(clean_data) if indices is None else int(indices.shape[0])
        steps = self.steps_per_epoch(num)
        if steps == 0:
            raise ValueError(
                f"{num} training examples are fewer than one batch of {self.batch_size}"
            )
        if len(poison_data) == 0:
            raise ValueError("poison_data is empty")
        k = self.batch_size if poison_batch_size is None else poison_batch_size
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.batch_size:
            raise ValueError(
                f"poison_batch_size must be an int in [1, batch_size={self.batch_size}], "
                f"got {poison_batch_size!r}"
            )
        poisoned = alternating_schedule(steps, poison_every)
        if jax.tree.structure(update_mask) != jax.tree.structure(state.params):
            raise ValueError(
                "update_mask must have the structure of the parameters: got "
                f"{jax.tree.structure(update_mask)}, expected {jax.tree.structure(state.params)}"
            )
        poison_steps_fn = self._poison_steps_fn(update_mask_mode, poison_transform)
        update_mask = self.replicate(update_mask)

        clean_order, fill_order, poison_order = _alternating_order(
            key, num, steps, self.batch_size, poison_every, len(poison_data), k
        )
        if indices is not None:
            indices = jnp.asarray(indices, jnp.int32)
            clean_order, fill_order = indices[clean_order], indices[fill_order]

        clean_out, poison_out = [], []
        next_clean = next_poison = 0
        bar = tqdm(total=steps, desc=desc, unit="step", disable=not self.progress, leave=False)
        start = time.perf_counter()
        for kind, c, calls in dispatch_plan(poisoned, self.steps_per_call):
            for _ in range(calls):
                if kind:
                    rows = slice(next_poison, next_poison + c)
                    state, out = poison_steps_fn(
                        state,
                        clean_data,
                        poison_data,
                        update_mask,
                        fill_order[rows],
                        poison_order[rows],
                    )
                    poison_out.append(out)
                    next_poison += c
                else:
                    rows = slice(next_clean, next_clean + c)
                    state, out = self._train_steps(state, clean_data, clean_order[rows])
                    clean_out.append(out)
                    next_clean += c
                if self.progress:
                    elapsed = time.perf_counter() - start
                    done = next_clean + next_poison
                    bar.set_postfix({"img/s": f"{done * self.batch_size / elapsed:.0f}"})
                    bar.update(c)
        last_lr = out.lr[-1]

        def summary(outs, columns):
            if not outs:
                return jnp.float32(jnp.nan), jnp.float32(jnp.nan)
            loss = jnp.mean(jnp.concatenate([o.loss for o in outs]))
            correct = jnp.concatenate([o.correct for o in outs])[:, columns]
            return loss, jnp.mean(correct)

        # Poisoned batches hold their triggered examples first (see `_poison_steps_fn`).
        (clean_loss, clean_acc), (poison_loss, poison_acc), lr = jax.device_get(
            (summary(clean_out, slice(None)), summary(poison_out, slice(0, k)), last_lr)
        )
        seconds = time.perf_counter() - start
        bar.close()
        stats = AlternatingEpochStats(
            clean_loss=float(clean_loss),
            clean_accuracy=float(clean_acc),
            poison_loss=float(poison_loss),
            poison_accuracy=float(poison_acc),
            lr=float(lr),
            clean_steps=next_clean,
            poison_steps=next_poison,
            seconds=seconds,
            images_per_second=steps * self.batch_size / seconds,
        )
        return state, stats

    def _poison_steps_fn(
        self, update_mask_mode: str, poison_transform: BatchTransform | None = None
    ):
        """The compiled poisoned step(s) for one update-mask mode and poison transform (built
        on first use; keyed by `(update_mask_mode, poison_transform)`).

        `poison_steps(state, clean, poison, update_mask, fill_idx int32[c, B-k],
        poison_idx int32[c, k])` runs c steps; each batch is the k poison examples followed
        by the B-k clean ones. Like `_train_steps`, c = 1 runs without `scan`.
        """
        if update_mask_mode not in UPDATE_MASK_MODES:
            raise ValueError(
                f"update_mask_mode must be one of {UPDATE_MASK_MODES}, got {update_mask_mode!r}"
            )
        cache_key = (update_mask_mode, poison_transform)
        if cache_key not in self._poison_steps:

            def poison_step(state, clean: DeviceData, poison: DeviceData, update_mask, fill, idx):
                images = jnp.concatenate([poison.images[idx], clean.images[fill]])
                labels = jnp.concatenate([poison.labels[idx], clean.labels[fill]])
                weights = jnp.concatenate([poison.weights[idx], clean.weights[fill]])
                after_augment = None
                if poison_transform is not None:
                    k = idx.shape[0]  # the poison rows lead the batch

                    def after_augment(key, images, labels):
                        head, head_labels = poison_transform(key, images[:k], labels[:k])
                        images = jnp.concatenate([head.astype(images.dtype), images[k:]])
                        return images, jnp.concatenate(
                            [head_labels.astype(labels.dtype), labels[k:]]
                        )

                masked_step = self._make_train_step(
                    update_mask_mode=update_mask_mode, after_augment=after_augment
                )
                return masked_step(state, images, labels, weights, update_mask)

            def poison_steps(state, clean, poison, update_mask, fill, idx):
                if idx.shape[0] == 1:  # No loop: see the module docstring.
                    state, out = poison_step(state, clean, poison, update_mask, fill[0], idx[0])
                    return state, jax.tree.map(lambda x: x[None], out)
                return jax.lax.scan(
                    lambda s, xs: poison_step(s, clean, poison, update_mask, *xs),
                    state,
                    (fill, idx),
                )

            self._poison_steps[cache_key] = jax.jit(
                poison_steps, donate_argnums=0, out_shardings=self._replicated
            )
        return self._poison_steps[cache_key]

    # -- ensembles ---------------------------------------------------------------------

    def stack(self, states: Sequence[TrainState]) -> TrainState:
        """Stacks member states along a new leading axis (replicated) for
        `train_epoch_ensemble`; `unstack(stacked, m)` takes member m back out."""
        return self.replicate(jax.tree.map(lambda *xs: jnp.stack(xs), *states))

    def unstack(self, stacked: TrainState, member: int) -> TrainState:
        """Member `member` of a stacked state."""
        return jax.tree.map(lambda x: x[member], stacked)

    def stack_data(self, datasets: Sequence[DeviceData]) -> DeviceData:
        """Stacks same-sized datasets along a new leading member axis, for
        `train_epoch_ensemble` with one dataset per member.

        Raises:
            ValueError: if the datasets' shapes differ.
        """
        shapes = {jax.tree.map(jnp.shape, d) for d in datasets}
        if len(shapes) != 1:
            raise ValueError(
                "members trained together need datasets of one shape, got "
                f"{[jax.tree.map(jnp.shape, d) for d in datasets]}"
            )
        return self.replicate(jax.tree.map(lambda *xs: jnp.stack(xs), *datasets))

    def train_epoch_ensemble(
        self,
        states: TrainState,
        data: DeviceData,
        keys: jax.Array,
        *,
        indices: jax.Array | None = None,
        desc: str = "train ensemble",
        record_presentations: bool = False,
    ) -> tuple[TrainState, list[EpochStats], list[Presentations] | None]:
        """One epoch of M models at once: `jax.vmap` of the train steps over members.

        Member m trains exactly as `train_epoch(unstack(states, m), data, keys[m])` would
        (its own shuffle, augmentation stream, initialization and schedule), but every step
        is one batched computation for all members, which fills an accelerator that one
        small model leaves idle (Paul et al. train EL2N ensembles this way). Members may
        share one dataset (an ensemble) or each have their own of the same size (replicate
        seeds; `stack_data`), with a shared or per-member subset.

        Args:
            states: member states stacked along axis 0 (`stack`); donated.
            data: the on-device dataset shared by all members (images uint8[N, H, W, 3]),
                or one per member stacked along axis 0 (uint8[M, N, H, W, 3]).
            keys: M shuffle keys, stacked (`jnp.stack` of typed keys).
            indices: optional examples making up each member's epoch: int32[K] shared, or
                int32[M, K] one subset per member.
            desc: progress-bar label.
            record_presentations: also return each member's presentations.

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
        steps = self.steps_per_epoch(num)
        if steps == 0:
            raise ValueError(
                f"{num} training examples are fewer than one batch of {self.batch_size}"
            )
        chunk = largest_divisor_at_most(steps, self.steps_per_call)
        orders = jnp.stack(
            [_epoch_order(keys[m], num, steps, self.batch_size) for m in range(members)]
        )
        if indices is not None and indices.ndim == 2:
            orders = jax.vmap(lambda subset, order: subset[order])(indices, orders)
        elif indices is not None:
            orders = indices[orders]
        steps_fn = self._group_steps if own_data else self._ensemble_steps
        outs = []
        bar = tqdm(total=steps, desc=desc, unit="step", disable=not self.progress, leave=False)
        start = time.perf_counter()
        for first in range(0, steps, chunk):
            states, out = steps_fn(states, data, orders[:, first : first + chunk])
            outs.append(out)
            bar.update(chunk)
        loss = jnp.concatenate([o.loss for o in outs], axis=1)  # [M, steps]
        correct = jnp.concatenate([o.correct for o in outs], axis=1)  # [M, steps, B]
        lr = outs[-1].lr[:, -1]
        loss, accuracy, lr = jax.device_get(
            (jnp.mean(loss, axis=1), jnp.mean(correct, axis=(1, 2)), lr)
        )
        seconds = time.perf_counter() - start
        bar.close()
        stats = [
            EpochStats(
                loss=float(loss[m]),
                accuracy=float(accuracy[m]),
                lr=float(lr[m]),
                steps=steps,
                seconds=seconds,
                images_per_second=members * steps * self.batch_size / seconds,
            )
            for m in range(members)
        ]
        presentations = (
            [Presentations(orders[m], correct[m]) for m in range(members)]
            if record_presentations
            else None
        )
        return states, stats, presentations

    # -- inference ---------------------------------------------------------------------

    def predict(self, state: TrainState, images) -> tuple[jax.Array, jax.Array]:
        """Logits and features of every image, in inference mode, in fixed-shape batches.

        Args:
            state: a train state (its params and batch_stats are used).
            images: uint8[N, H, W, 3], on the host or the device.

        Returns:
            (logits float32[N, C], features float32[N, F]) on the device.
        """
        return self.predict_variables(state.params, state.batch_stats, images)

    def predict_variables(self, params, batch_stats, images) -> tuple[jax.Array, jax.Array]:
        """`predict` from explicit variables (e.g. with a mask applied)."""
        n = int(images.shape[0])
        b = self.eval_batch_size
        logits, features = [], []
        for first in range(0, n, b):
            batch = images[first : first + b]
            real = int(batch.shape[0])
            if real < b:  # Pad the last batch so every call has the same shape.
                batch = jnp.concatenate(
                    [jnp.asarray(batch), jnp.zeros((b - real, *batch.shape[1:]), batch.dtype)]
                )
            out_logits, out_features = self._predict(params, batch_stats, batch)
            logits.append(out_logits[:real])
            features.append(out_features[:real])
        return jnp.concatenate(logits), jnp.concatenate(features)

    def predict_labels(self, state: TrainState, images) -> np.ndarray:
        """int32[N] predicted classes on the host."""
        logits, _ = self.predict(state, images)
        return np.asarray(jax.device_get(jnp.argmax(logits, axis=-1)), np.int32)


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


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _epoch_order(key: jax.Array, num: int, steps: int, batch_size: int) -> jax.Array:
    """int32[steps, batch_size]: a random permutation of range(num), truncated to full
    batches."""
    perm = jax.random.permutation(key, num)[: steps * batch_size]
    return perm.reshape(steps, batch_size).astype(jnp.int32)
