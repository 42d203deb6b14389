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

Every epoch runs one `StepVariant` (`jaxbd.train.step`): the plain step by default, or a
variant with its own loss, extra traced inputs, a post-augmentation transform, its own way of
gathering a batch, or an update mask. `compiled_steps(variant)` is the compiled multi-step
function of a variant, built once and reused by every later epoch; an epoch loop of another
shape (a training-time attack alternating two variants, `jaxbd.attacks.pcb_training`) is
written from it.

This module is longer than most because it is one class, the engine: its compiled
functions (an epoch, a step range, ensembles, inference) share one cache and one mesh.
"""

from __future__ import annotations

import functools
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxbd.train import preemption, sharding
from jaxbd.train.epoch_order import epoch_order, largest_divisor_at_most
from jaxbd.train.optimizer import sgd_direction
from jaxbd.train.schedule import CosineSchedule
from jaxbd.train.state import TrainState, create_train_state, init_variables
from jaxbd.train.step import PLAIN, StepVariant, make_predict_step, make_train_step


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
        extra: further figures for the log, e.g. the epoch means of a custom loss's terms
            (`LossOutput.terms`) or a training-time attack's poisoned-step statistics.
        progress: None for a finished epoch; for one stopped at a preemption request
            (`Trainer.train_epoch(preemptible=True)`), its done part, from which
            `train_epoch(resume=...)` continues (the other figures are then those of the
            done part).
    """

    loss: float
    accuracy: float
    lr: float
    steps: int
    seconds: float
    images_per_second: float
    extra: Mapping[str, Any] = {}
    progress: EpochProgress | None = None


class EpochProgress(NamedTuple):
    """The done part of an epoch that stopped mid-way: what a mid-epoch checkpoint keeps
    besides the train state, so that the resumed epoch ends with the statistics of an
    uninterrupted one.

    Attributes:
        steps: steps of the epoch done (the position in the epoch's permutation).
        losses: the loss of each done step (float32 values).
        correct: presentations classified correctly in the done steps.
        terms: each loss term's per-step values (custom losses; empty for plain training).
        lr: the learning rate of the last done step.
    """

    steps: int
    losses: tuple[float, ...]
    correct: int
    terms: Mapping[str, tuple[float, ...]]
    lr: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict (`from_json` reads it back exactly)."""
        return {
            "steps": self.steps,
            "losses": list(self.losses),
            "correct": self.correct,
            "terms": {k: list(v) for k, v in self.terms.items()},
            "lr": self.lr,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EpochProgress:
        return cls(
            steps=int(d["steps"]),
            losses=tuple(float(x) for x in d["losses"]),
            correct=int(d["correct"]),
            terms={k: tuple(float(x) for x in v) for k, v in d["terms"].items()},
            lr=float(d["lr"]),
        )


def _progress(resume: EpochProgress | None, outs, steps_done: int) -> EpochProgress:
    """The epoch's done part: `resume`'s and that of the step outputs `outs` (one read)."""
    losses, correct, terms, lr = jax.device_get(
        (
            jnp.concatenate([o.loss for o in outs]),
            jnp.sum(jnp.concatenate([o.correct for o in outs])),
            {k: jnp.concatenate([o.terms[k] for o in outs]) for k in outs[0].terms},
            outs[-1].lr[-1],
        )
    )
    before = resume or EpochProgress(0, (), 0, {}, 0.0)
    return EpochProgress(
        steps=steps_done,
        losses=before.losses + tuple(float(x) for x in losses),
        correct=before.correct + int(correct),
        terms={k: before.terms.get(k, ()) + tuple(float(x) for x in v) for k, v in terms.items()},
        lr=float(lr),
    )


EpochFn = Callable[..., "tuple[TrainState, EpochStats, Presentations | None]"]
"""`epoch_fn(state, data, key, *, indices, desc, record_presentations) -> (state, stats,
presentations)`, like `Trainer.train_epoch`: what a training phase runs each epoch (a
training-time attack supplies its own)."""


class Presentations(NamedTuple):
    """Per-presentation correctness of one epoch, on the device (for forgetting scores).

    Attributes:
        indices: int32[steps, B] example index of each presentation, in step order.
        correct: bool[steps, B] whether it was classified correctly in that step.
    """

    indices: jax.Array
    correct: jax.Array


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
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.steps_per_call = steps_per_call
        self.progress = progress
        self._batch_sharded = sharding.batch_sharded(mesh)
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
        self.train_step = self._make_train_step()
        # Compiled multi-step functions, one per step variant, built on first use.
        self._compiled: dict[tuple[StepVariant, str], Callable] = {}
        self._predict = jax.jit(
            make_predict_step(model, mean=mean, std=std, mesh=mesh),
            out_shardings=self._replicated,
        )

    @property
    def progress(self) -> bool:
        """Whether progress bars are shown: if asked for, and only on process 0."""
        return self._progress and jax.process_index() == 0

    @progress.setter
    def progress(self, value: bool) -> None:
        self._progress = bool(value)

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
        return sharding.put(state, self._replicated)

    def replicate(self, tree):
        """Copies arrays (e.g. a test set) to every device of the mesh (of every process)."""
        return sharding.put(tree, self._replicated)

    def global_value(self, tree):
        """`tree` as replicated global arrays when several processes share the mesh (a key
        or indices each process computed alike); unchanged with one process."""
        return tree if jax.process_count() == 1 else self.replicate(tree)

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
        if jax.process_count() > 1:
            _check_same_everywhere(data)
        return sharding.put(data, self._replicated)

    # -- training ----------------------------------------------------------------------

    def steps_per_epoch(self, num_examples: int) -> int:
        """Full batches per epoch; the remainder (< batch_size, different each epoch) is
        dropped so every step has the same shape and BatchNorm sees only real examples."""
        return num_examples // self.batch_size

    def compiled_steps(self, variant: StepVariant = PLAIN, members: str = "none") -> Callable:
        """The compiled multi-step function of a step variant (built on first use).

        `steps(state, data, rows, update_mask, extra) -> (state, StepOutput)` runs c steps,
        where every leaf of the `rows` pytree has leading axis c (one entry per step, as the
        variant's `gather` takes them); `update_mask` and `extra` are passed to every step
        (None: none). c = 1 runs without `scan` (see the module docstring). The state is
        donated.

        Args:
            variant: what the steps compute.
            members: "none" (one model), "shared" (M models stacked along axis 0 of the
                state and rows, sharing one dataset) or "own" (each with its own dataset,
                stacked too); plain variant only for "shared"/"own".
        """
        cache_key = (variant, members)
        if cache_key not in self._compiled:
            step = self._make_train_step(
                update_mask_mode=variant.update_mask_mode,
                after_augment=variant.after_augment,
                loss_fn=variant.loss_fn,
            )
            mesh = self.mesh

            def one_step(state, data, rows, update_mask, extra):
                images, labels, weights = variant.gather(data, rows, mesh)
                return step(state, images, labels, weights, update_mask, extra)

            def steps(state, data, rows, update_mask=None, extra=None):
                if jax.tree.leaves(rows)[0].shape[0] == 1:  # No loop: see the module docstring.
                    first = jax.tree.map(lambda r: r[0], rows)
                    state, out = one_step(state, data, first, update_mask, extra)
                    return state, jax.tree.map(lambda x: x[None], out)
                return jax.lax.scan(
                    lambda s, r: one_step(s, data, r, update_mask, extra), state, rows
                )

            fn = steps
            if members != "none":
                # Ensembles (a leading member axis on the state and the rows) train in one
                # call with vmap, sharing one dataset or each with its own (replicate seeds
                # of a grid, each with its own poisoned set and selection).
                if variant != PLAIN:
                    raise ValueError("only the plain step trains several members at once")
                in_axes = {"shared": (0, None, 0), "own": (0, 0, 0)}[members]
                batched = jax.vmap(lambda s, d, r: steps(s, d, r), in_axes=in_axes)

                def fn(state, data, rows, update_mask=None, extra=None):
                    return batched(state, data, rows)

            # The state is donated: its buffers are reused for the new state.
            self._compiled[cache_key] = jax.jit(
                fn, donate_argnums=0, out_shardings=self._replicated
            )
        return self._compiled[cache_key]

    def train_epoch(
        self,
        state: TrainState,
        data: DeviceData,
        key: jax.Array,
        *,
        indices: jax.Array | None = None,
        desc: str = "train",
        record_presentations: bool = False,
        variant: StepVariant = PLAIN,
        update_mask=None,
        extra=None,
        resume: EpochProgress | None = None,
        preemptible: bool = False,
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
            variant: the step variant (default the plain step); its `gather` must take
                rows of `data` (the default one does).
            update_mask: optional pytree like the parameters, passed to every step (see
                `make_train_step`); replicate it once (`replicate`) to avoid a copy per call.
            extra: optional pytree passed to the variant's loss at every step.
            resume: the part of this epoch already done (`EpochStats.progress` of a run that
                stopped in it, restored with its state): the epoch continues at step
                `resume.steps` of the same permutation, and its statistics are those of the
                whole epoch, exactly as if it had not stopped.
            preemptible: stop after the current call when `preemption.stop_requested()`
                says so (asked after every call but the last, at the same calls on every
                process, with at most one call queued behind the running one); the returned
                stats then carry the done part as `progress`. Not with
                `record_presentations` (a stopped epoch's presentations are not kept).

        Returns:
            (new state, epoch statistics, presentations or None). With a loss that reports
            terms, `stats.extra` holds their epoch means.
        """
        num = len(data) if indices is None else int(indices.shape[0])
        steps = self.steps_per_epoch(num)
        if steps == 0:
            raise ValueError(
                f"{num} training examples are fewer than one batch of {self.batch_size}"
            )
        done = 0 if resume is None else resume.steps
        if not 0 <= done < steps:
            raise ValueError(f"resume.steps={done} is not a step inside an epoch of {steps}")
        if done and record_presentations:
            raise ValueError("an epoch resumed mid-way has no presentations of its done part")
        chunk = largest_divisor_at_most(steps, self.steps_per_call)
        if done % chunk:  # resumed with another steps_per_call: calls of one shape anyway
            chunk = largest_divisor_at_most(steps - done, self.steps_per_call)
        key = self.global_value(key)
        order = epoch_order(key, num, steps, self.batch_size)
        if indices is not None:
            order = jnp.asarray(self.global_value(indices), jnp.int32)[order]
        steps_fn = self.compiled_steps(variant)
        cut = preemptible and not record_presentations

        outs = []
        bar = tqdm(
            total=steps,
            initial=done,
            desc=desc,
            unit="step",
            disable=not self.progress,
            leave=False,
        )
        start = time.perf_counter()
        first = done
        while first < steps:
            state, out = steps_fn(state, data, order[first : first + chunk], update_mask, extra)
            outs.append(out)
            first += chunk
            if self.progress:
                # Read the previous call's loss: it is finished, so this never stalls the
                # device, which is already running the call just dispatched.
                shown = outs[-2].loss if len(outs) > 1 else None
                postfix = {}
                if shown is not None:
                    postfix["loss"] = f"{float(jnp.mean(shown)):.4f}"
                elapsed = time.perf_counter() - start
                postfix["img/s"] = f"{(first - done) * self.batch_size / elapsed:.0f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(chunk)
            if cut and first < steps:
                if len(outs) > 1:
                    # Dispatch is asynchronous: without a wait the host would queue the whole
                    # epoch at once and ask about a stop long before the steps run. Waiting
                    # for the previous call keeps one call queued behind the running one (the
                    # device stays busy), so a stop lands within two calls of the request.
                    jax.block_until_ready(outs[-2].loss)
                if preemption.stop_requested():
                    break
        bar.close()
        if first < steps:  # stopped: the done part, for the checkpoint
            progress = _progress(resume, outs, first)
            stats = self._epoch_stats(progress, first - done, start)
            return state, stats._replace(progress=progress), None
        stats = self._epoch_stats(_progress(resume, outs, steps), steps - done, start)
        correct = jnp.concatenate([o.correct for o in outs])
        presentations = Presentations(order, correct) if record_presentations else None
        return state, stats, presentations

    def _epoch_stats(self, progress: EpochProgress, ran: int, started: float) -> EpochStats:
        """An epoch's statistics from all of its steps so far (`progress`); `ran` of them
        ran in this call, which is what the throughput counts."""
        # The same reductions, over arrays of the same shape, whether or not the epoch was
        # stopped and resumed in between: the figures are bit-identical either way.
        losses = np.asarray(progress.losses, np.float32)
        loss = jnp.mean(jnp.asarray(losses))
        accuracy = np.float32(progress.correct) / np.float32(progress.steps * self.batch_size)
        terms = {
            k: jnp.mean(jnp.asarray(np.asarray(v, np.float32))) for k, v in progress.terms.items()
        }
        loss, terms = jax.device_get((loss, terms))
        seconds = time.perf_counter() - started
        return EpochStats(
            loss=float(loss),
            accuracy=float(accuracy),
            lr=progress.lr,
            steps=progress.steps,
            seconds=seconds,
            images_per_second=ran * self.batch_size / seconds,
            extra={k: float(v) for k, v in terms.items()},
        )

    def train_steps(
        self,
        state: TrainState,
        data: DeviceData,
        key: jax.Array,
        *,
        start: int,
        steps: int,
        variant: StepVariant = PLAIN,
        update_mask=None,
        extra=None,
        desc: str = "train",
    ) -> tuple[TrainState, EpochStats]:
        """Runs steps `start .. start + steps - 1` of an endless stream of epochs.

        Step s is step `s % spe` of epoch `s // spe` (spe = `steps_per_epoch(len(data))`),
        whose order is the permutation drawn from `fold_in(key, epoch)`: the stream depends
        only on `key`, so training in pieces (e.g. between the evaluations of a defense's
        trade-off curve, or after a resume) is exactly training in one go.

        Args:
            state: the train state; donated.
            data: the on-device dataset (at least one batch).
            key: the stream's PRNG key.
            start: the first step's index in the stream (>= 0).
            steps: how many steps to run (>= 1).
            variant, update_mask, extra: as for `train_epoch`.
            desc: progress-bar label.

        Returns:
            (new state, statistics of these steps, as `EpochStats`).
        """
        num = len(data)
        spe = self.steps_per_epoch(num)
        if spe == 0:
            raise ValueError(
                f"{num} training examples are fewer than one batch of {self.batch_size}"
            )
        if start < 0 or steps < 1:
            raise ValueError(f"need start >= 0 and steps >= 1, got start={start}, steps={steps}")
        first_epoch, last_epoch = start // spe, (start + steps - 1) // spe
        key = self.global_value(key)
        orders = [
            epoch_order(jax.random.fold_in(key, e), num, spe, self.batch_size)
            for e in range(first_epoch, last_epoch + 1)
        ]
        offset = start - first_epoch * spe
        rows = jnp.concatenate(orders)[offset : offset + steps]
        chunk = largest_divisor_at_most(steps, self.steps_per_call)
        steps_fn = self.compiled_steps(variant)
        outs = []
        bar = tqdm(total=steps, desc=desc, unit="step", disable=not self.progress, leave=False)
        started = time.perf_counter()
        for first in range(0, steps, chunk):
            state, out = steps_fn(state, data, rows[first : first + chunk], update_mask, extra)
            outs.append(out)
            bar.update(chunk)
        stats = self._summarize(outs, steps, started)
        bar.close()
        return state, stats

    def _summarize(self, outs, steps: int, started: float) -> EpochStats:
        """Host statistics of a sequence of step outputs (one read back)."""
        loss = jnp.mean(jnp.concatenate([o.loss for o in outs]))
        accuracy = jnp.mean(jnp.concatenate([o.correct for o in outs]))
        terms = {k: jnp.mean(jnp.concatenate([o.terms[k] for o in outs])) for k in outs[0].terms}
        loss, accuracy, lr, terms = jax.device_get((loss, accuracy, outs[-1].lr[-1], terms))
        seconds = time.perf_counter() - started
        return EpochStats(
            loss=float(loss),
            accuracy=float(accuracy),
            lr=float(lr),
            steps=steps,
            seconds=seconds,
            images_per_second=steps * self.batch_size / seconds,
            extra={k: float(v) for k, v in terms.items()},
        )

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
        keys = self.global_value(keys)
        if indices is not None:
            indices = self.global_value(indices)
        orders = jnp.stack(
            [epoch_order(keys[m], num, steps, self.batch_size) for m in range(members)]
        )
        if indices is not None and indices.ndim == 2:
            orders = jax.vmap(lambda subset, order: subset[order])(indices, orders)
        elif indices is not None:
            orders = indices[orders]
        steps_fn = self.compiled_steps(PLAIN, "own" if own_data else "shared")
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
            if jax.process_count() > 1:  # a global batch, split over every process's devices
                batch = sharding.put(batch, self._batch_sharded)
            out_logits, out_features = self._predict(params, batch_stats, batch)
            logits.append(out_logits[:real])
            features.append(out_features[:real])
        return jnp.concatenate(logits), jnp.concatenate(features)

    def predict_labels(self, state: TrainState, images) -> np.ndarray:
        """int32[N] predicted classes on the host."""
        logits, _ = self.predict(state, images)
        return np.asarray(jax.device_get(jnp.argmax(logits, axis=-1)), np.int32)


def _check_same_everywhere(data: DeviceData) -> None:
    """Raises unless every process holds the same dataset (compared by a checksum).

    Each process builds its copy of the global arrays from its own host data, which is only
    one global array if the copies agree: a host with another copy of the data (a different
    file, cache or poisoning) would otherwise train silently on something else.
    """
    from jax.experimental import multihost_utils

    digest = np.zeros(8, np.uint32)
    for i, leaf in enumerate((data.images, data.labels, data.weights)):
        digest[i] = zlib.crc32(np.ascontiguousarray(leaf).view(np.uint8).reshape(-1))
    multihost_utils.assert_equal(
        digest,
        fail_message=(
            "the training data differs between processes: every process must load the "
            "same dataset (the same files, settings and seed)"
        ),
    )
