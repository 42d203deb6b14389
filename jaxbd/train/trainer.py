"""The engine: compiled training and inference for one model, optimizer and device mesh.

A `Trainer` is reused across every phase of an experiment (pretraining, training on a
coreset, IMP rounds, a defense's fine-tuning): the data, the epoch's example indices, the
loss weights, the masks and the schedule are all arguments, so a new phase compiles nothing
new as long as the shapes stay the same. The dataset is placed on the devices once as uint8;
each epoch draws a permutation on the device and runs `steps_per_call` steps per jitted call
(a `lax.scan`), through the one loop of `jaxbd.train.loop`.

On the CPU the default is one step per call without `scan`: XLA:CPU runs convolutions inside
a loop body an order of magnitude slower than at the top level (1.66 s vs 0.11 s per
ResNet-18 step at width 8, batch 64), and dispatch overhead is negligible there.

Every epoch runs one `StepVariant` (`jaxbd.train.step`); `compiled_steps(variant)` is its
compiled multi-step function, built once. Ensembles (`jaxbd.train.ensemble`), inference
(`jaxbd.train.inference`) and the on-device dataset (`jaxbd.train.device_data`) have modules
of their own; this one keeps the compiled functions' shared cache and mesh.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxbd.train import ensemble, loop, sharding
from jaxbd.train import stats as stats_lib
from jaxbd.train.device_data import DeviceData, put_data
from jaxbd.train.epoch_order import epoch_order
from jaxbd.train.inference import predict_batches
from jaxbd.train.optimizer import sgd_direction
from jaxbd.train.schedule import CosineSchedule
from jaxbd.train.state import TrainState, create_train_state, init_variables
from jaxbd.train.stats import EpochFn, EpochProgress, EpochStats, Presentations
from jaxbd.train.step import PLAIN, StepVariant, make_predict_step, make_train_step

# `DeviceData` and the loop's records keep their import path here.
__all__ = ["DeviceData", "EpochFn", "EpochProgress", "EpochStats", "Presentations", "Trainer"]


class Trainer:
    """Compiled training and inference for one model, optimizer and mesh.

    Args:
        model: any object with flax's `apply(variables, x, train=..., mutable=...)` and
            `init` returning `(logits, features)` (a flax module; not type-checked).
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
        model: Any,
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
        return put_data(images, labels, weights, self._replicated)

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
                says so (`loop.run_calls`); the returned stats then carry the done part as
                `progress` (with `record_presentations`, its presentations too).

        Returns:
            (new state, epoch statistics, presentations or None). With a loss that reports
            terms, `stats.extra` holds their epoch means.
        """
        num = len(data) if indices is None else int(indices.shape[0])
        steps = self._steps_of(num)
        done = 0 if resume is None else resume.steps
        if not 0 <= done < steps:
            raise ValueError(f"resume.steps={done} is not a step inside an epoch of {steps}")
        if done and record_presentations and resume.presented is None:
            raise ValueError("an epoch resumed mid-way has no presentations of its done part")
        chunk = loop.chunk_size(steps, done, self.steps_per_call)
        key = self.global_value(key)
        order = epoch_order(key, num, steps, self.batch_size)
        if indices is not None:
            order = jnp.asarray(self.global_value(indices), jnp.int32)[order]
        ran = self._run_rows(
            state, data, order, done, steps, chunk, variant, update_mask, extra, desc, preemptible
        )
        keep = ran.stopped and record_presentations
        progress = stats_lib.progress_of(resume, ran.outs, ran.done, presented=keep)
        stats = stats_lib.epoch_stats(progress, ran.done - done, ran.started, self.batch_size)
        if ran.stopped:  # the done part, for the checkpoint
            return ran.state, stats._replace(progress=progress), None
        presentations = None
        if record_presentations:
            correct = [o.correct for o in ran.outs]
            if done:  # the done part's, then this call's
                correct.insert(0, self.replicate(resume.unpack(self.batch_size)))
            presentations = Presentations(order, jnp.concatenate(correct))
        return ran.state, stats, presentations

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
        resume: EpochProgress | None = None,
        preemptible: bool = False,
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
            resume: the done part of this range (`EpochStats.progress` of a call with the
                same `start` and `steps` that stopped): the range continues after it, and
                its statistics are those of the whole range.
            preemptible: stop after the current call at a preemption request, as
                `train_epoch` does; the stats then carry the done part as `progress`.

        Returns:
            (new state, statistics of these steps, as `EpochStats`).
        """
        num = len(data)
        spe = self._steps_of(num)
        if start < 0 or steps < 1:
            raise ValueError(f"need start >= 0 and steps >= 1, got start={start}, steps={steps}")
        done = 0 if resume is None else resume.steps
        if not 0 <= done < steps:
            raise ValueError(f"resume.steps={done} is not a step inside a range of {steps}")
        first_epoch, last_epoch = start // spe, (start + steps - 1) // spe
        key = self.global_value(key)
        orders = [
            epoch_order(jax.random.fold_in(key, e), num, spe, self.batch_size)
            for e in range(first_epoch, last_epoch + 1)
        ]
        offset = start - first_epoch * spe
        rows = jnp.concatenate(orders)[offset : offset + steps]
        chunk = loop.chunk_size(steps, done, self.steps_per_call)
        ran = self._run_rows(
            state, data, rows, done, steps, chunk, variant, update_mask, extra, desc, preemptible
        )
        stats = stats_lib.step_stats(
            ran.outs, ran.done, ran.done - done, ran.started, self.batch_size, resume
        )
        if ran.stopped:
            progress = stats_lib.progress_of(resume, ran.outs, ran.done)
            return ran.state, stats._replace(progress=progress)
        return ran.state, stats

    def _run_rows(
        self, state, data, rows, start, stop, chunk, variant, update_mask, extra, desc, preemptible
    ) -> loop.Ran:
        """Steps `start .. stop - 1` of `rows` (one entry per step) through the one loop, in
        calls of `chunk` steps of `variant`'s compiled function."""
        calls = loop.chunked(
            self.compiled_steps(variant),
            data,
            rows,
            start=start,
            stop=stop,
            chunk=chunk,
            tail=(update_mask, extra),
        )
        return loop.run_calls(
            state,
            calls,
            total=stop,
            initial=start,
            desc=desc,
            progress=self.progress,
            images_per_step=self.batch_size,
            preemptible=preemptible,
        )

    def _steps_of(self, num: int) -> int:
        """`steps_per_epoch(num)`, which must be at least one."""
        steps = self.steps_per_epoch(num)
        if steps == 0:
            raise ValueError(
                f"{num} training examples are fewer than one batch of {self.batch_size}"
            )
        return steps

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
        resume: Sequence[EpochProgress] | None = None,
        preemptible: bool = False,
    ) -> tuple[TrainState, list[EpochStats], list[Presentations] | None]:
        """One epoch of M models at once, `jax.vmap`-batched: member m trains exactly as
        `train_epoch(unstack(states, m), data, keys[m])` would. See
        `jaxbd.train.ensemble.train_epoch_ensemble` for the arguments.

        Returns:
            (new stacked states, per-member statistics, per-member presentations or None).
        """
        return ensemble.train_epoch_ensemble(
            self,
            states,
            data,
            keys,
            indices=indices,
            desc=desc,
            record_presentations=record_presentations,
            resume=resume,
            preemptible=preemptible,
        )

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
        return predict_batches(
            self._predict,
            params,
            batch_stats,
            images,
            batch_size=self.eval_batch_size,
            batch_sharding=self._batch_sharded,
        )

    def predict_labels(self, state: TrainState, images) -> np.ndarray:
        """int32[N] predicted classes on the host."""
        logits, _ = self.predict(state, images)
        return np.asarray(jax.device_get(jnp.argmax(logits, axis=-1)), np.int32)
