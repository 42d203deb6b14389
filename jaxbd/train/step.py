"""The jitted train and inference steps, and the one way to vary them.

`make_train_step` builds one pure function `train_step(state, images, labels, weights)` over a
global batch. Everything that changes between phases of an experiment — the data, the
per-example loss weights, the pruning mask, the learning-rate schedule — is an argument or
part of the state, never a Python constant, so a new IMP round or a new coreset reuses the
compiled step.

The engine's single extension point is a `StepVariant`: what a step computes beyond plain
weighted cross-entropy training, as a hashable value that keys the compiled function.

- `loss_fn`: a custom loss with extra traced inputs (`extra`: a teacher's or a pivot's
  variables) and access to the model's intermediates (jaxbd's models `sow` their stage
  outputs), for distillation- and feature-matching defenses; its terms are reported.
- `after_augment`: a transform of the augmented batch (PCB stamping its trigger).
- `gather`: how a step's batch is taken from the on-device data (PCB mixes two datasets).
- `update_mask_mode`: what a per-call *update mask* (a float pytree like the parameters)
  does to the coordinates it excludes; independent of the pruning mask in the state.

`StepVariant()` is exactly the plain step, operation for operation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxbd.data import augment as augment_lib
from jaxbd.train import sharding
from jaxbd.train.state import TrainState
from jaxbd.types import PyTree

BatchTransform = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
"""`fn(key, images uint8[B, H, W, 3], labels int32[B]) -> (images, labels)`, e.g. an attack's
`train_fn`."""

UPDATE_MASK_MODES = ("freeze", "gradient")
"""How a step treats the coordinates its update mask excludes (see `make_train_step`)."""


class LossOutput(NamedTuple):
    """What a loss function returns to the step.

    Attributes:
        loss: float32 scalar, minimized.
        logits: float[B, C], the model's training-mode logits (for the step's accuracy).
        batch_stats: the updated BatchNorm statistics.
        terms: named float32 scalars reported with the step (e.g. the parts of a combined
            loss); empty for plain training.
    """

    loss: jax.Array
    logits: jax.Array
    batch_stats: PyTree
    terms: Mapping[str, jax.Array] = {}


LossFn = Callable[..., LossOutput]
"""`loss_fn(model, params, batch_stats, x, labels, weights, extra) -> LossOutput`.

`x` is the normalized float batch [B, H, W, 3], `labels` int32[B], `weights` float32[B],
`extra` the pytree passed to the step call (None when none was). Differentiated with respect
to `params`; must call the model in training mode to update `batch_stats`.
"""


def cross_entropy_loss(model, params, batch_stats, x, labels, weights, extra=None) -> LossOutput:
    """The plain loss: `mean(weights · CE(f(x), y))`, BatchNorm in training mode."""
    del extra
    variables = {"params": params, "batch_stats": batch_stats}
    (logits, _), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    loss = jnp.mean(weights * per_example)
    return LossOutput(loss, logits, updates.get("batch_stats", batch_stats))


Gather = Callable[[Any, Any, "Mesh | None"], tuple[jax.Array, jax.Array, jax.Array]]
"""`gather(data, rows, mesh) -> (images uint8[B, H, W, 3], labels int32[B], weights
float32[B])`: one step's batch from the on-device data, given that step's index rows (any
pytree) and the device mesh (None: one device)."""


def gather_rows(data, rows: jax.Array, mesh: Mesh | None = None):
    """The default gather: rows int32[B] of one dataset (`DeviceData`), split over the mesh
    so each device gathers its own part of the batch."""
    if mesh is not None:
        rows = jax.lax.with_sharding_constraint(rows, sharding.batch_sharded(mesh))
    return data.images[rows], data.labels[rows], data.weights[rows]


@dataclasses.dataclass(frozen=True)
class StepVariant:
    """What a train step computes beyond the plain one (see the module docstring).

    Hashable: it keys the engine's compiled functions, so build a variant once and reuse it
    (functions compare by identity).

    Attributes:
        loss_fn: the loss (`LossFn`); default plain weighted cross-entropy.
        after_augment: optional `fn(key, images uint8[B, H, W, 3], labels int32[B]) ->
            (images, labels)` applied after augmentation, before normalization.
        gather: how a step's batch is taken from the data (`Gather`).
        update_mask_mode: "freeze" or "gradient": what a step called with an update mask
            does to the coordinates the mask excludes (see `make_train_step`).
    """

    loss_fn: LossFn = cross_entropy_loss
    after_augment: BatchTransform | None = None
    gather: Gather = gather_rows
    update_mask_mode: Literal["freeze", "gradient"] = "freeze"

    def __post_init__(self):
        if self.update_mask_mode not in UPDATE_MASK_MODES:
            raise ValueError(
                f"update_mask_mode must be one of {UPDATE_MASK_MODES}, "
                f"got {self.update_mask_mode!r}"
            )


PLAIN = StepVariant()
"""The plain training step."""


class StepOutput(NamedTuple):
    """What one train step reports (kept on device until a log step).

    Attributes:
        loss: float32 scalar, the loss that was minimized (plain training: the weighted
            mean cross-entropy).
        correct: bool[B], whether each example's augmented view was classified correctly
            (the per-presentation signal forgetting scores need).
        lr: float32 scalar, the learning rate used for this step.
        terms: the loss function's named terms (empty for plain training).
    """

    loss: jax.Array
    correct: jax.Array
    lr: jax.Array
    terms: Mapping[str, jax.Array] = {}


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    crop_padding: int = 4,
    flip: bool = True,
    mesh: Mesh | None = None,
    update_mask_mode: Literal["freeze", "gradient"] = "freeze",
    after_augment: BatchTransform | None = None,
    loss_fn: LossFn = cross_entropy_loss,
):
    """Builds `train_step(state, images, labels, weights, update_mask=None, extra=None) ->
    (state, out)`.

    The step augments on the device (random crop with zero padding, horizontal flip; one key
    per example, derived from `fold_in(state.rng, state.step)`), normalizes, computes the
    per-example cross-entropy, minimizes `mean(weights · ce)`, masks the gradient, takes an SGD
    step with the scheduled learning rate and re-applies the mask, so pruned weights stay
    exactly zero.

    With an `update_mask` (a pytree like the parameters, 1 = this step may update the
    coordinate, 0 = it may not) the loss gradient is also multiplied by it, and
    `update_mask_mode` says what happens to the excluded coordinates:

    - "freeze": they are left exactly as they are — parameter *and* optimizer state
      (momentum buffer) are bit-identical after the step, so neither the momentum carried
      from earlier steps nor weight decay moves them, and their buffer resumes unchanged at
      the next unmasked step. A masked step is then, for the excluded coordinates, no step.
    - "gradient": only their loss gradient is zeroed; weight decay and the momentum buffer
      still update and move them, exactly like PyTorch's `p.grad.mul_(mask); opt.step()`
      (the Parameter-Controlled Backdoor's reference code).

    Either way, information from the masked step's loss only reaches the selected
    coordinates. The mask's values are data, so changing them does not recompile; passing a
    mask or not selects one of two traces. Without a mask the step is exactly the unmasked
    one (the same operations, bit for bit).

    Args:
        model: a module called as `model.apply(vars, x, train=True)` returning
            `(logits, features)`.
        tx: the direction transformation (`optimizer.sgd_direction`).
        mean: per-channel normalization mean (in [0, 1] pixel units).
        std: per-channel normalization standard deviation.
        crop_padding: zero padding of the random crop; 0 disables cropping.
        flip: random horizontal flips.
        mesh: when given, the batch is constrained to be split over the mesh's data axis.
        update_mask_mode: "freeze" or "gradient", see above; only matters for calls with an
            update mask.
        after_augment: optional `fn(key, images uint8[B, H, W, 3], labels int32[B]) ->
            (images, labels)` applied to the augmented batch before normalization, with a
            key of its own per step; the returned labels are the ones trained on and
            scored. A training-time attack that controls the pipeline uses it to stamp its
            trigger after augmentation (`jaxbd.attacks.pcb`).
        loss_fn: the loss (`LossFn`), called with the call's `extra` pytree; default the
            plain weighted cross-entropy.

    Returns:
        The un-jitted step; `images: uint8[B, H, W, 3]`, `labels: int32[B]`,
        `weights: float32[B]` (per-example loss weights; 1 for plain training),
        `update_mask`: None (update everything) or a float32 (or bool) pytree with the
        structure and leaf shapes of `state.params`; values other than 0 and 1 scale the
        loss gradient, and with "freeze" every nonzero value lets the coordinate change.
        `extra`: any pytree handed to `loss_fn` (traced, so new values never recompile).

    Raises:
        ValueError: for an unknown `update_mask_mode`.
    """
    if update_mask_mode not in UPDATE_MASK_MODES:
        raise ValueError(
            f"update_mask_mode must be one of {UPDATE_MASK_MODES}, got {update_mask_mode!r}"
        )

    def train_step(
        state: TrainState, images, labels, weights, update_mask: PyTree = None, extra=None
    ):
        if mesh is not None:
            images, labels, weights = jax.lax.with_sharding_constraint(
                (images, labels, weights), sharding.batch_sharded(mesh)
            )
        key = jax.random.fold_in(state.rng, state.step)
        if crop_padding or flip:
            images = augment_lib.augment(key, images, crop_padding=crop_padding, flip=flip)
        if after_augment is not None:
            images, labels = after_augment(jax.random.fold_in(key, 1), images, labels)
        x = augment_lib.normalize(images, mean, std)

        def objective(params):
            out = loss_fn(model, params, state.batch_stats, x, labels, weights, extra)
            return out.loss, (out.logits, out.batch_stats, dict(out.terms))

        (loss, (logits, batch_stats, terms)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        grads = jax.tree.map(jnp.multiply, grads, state.mask)
        if update_mask is not None:
            grads = jax.tree.map(jnp.multiply, grads, update_mask)
        direction, opt_state = tx.update(grads, state.opt_state, state.params)
        lr = state.schedule(state.step)
        params = jax.tree.map(
            lambda p, d, m: (p - lr * d.astype(p.dtype)) * m, state.params, direction, state.mask
        )
        if update_mask is not None and update_mask_mode == "freeze":
            params, opt_state = _keep_excluded(
                tx, update_mask, (params, opt_state), (state.params, state.opt_state)
            )
        new_state = state.replace(
            params=params, batch_stats=batch_stats, opt_state=opt_state, step=state.step + 1
        )
        correct = jnp.argmax(logits, axis=-1) == labels
        return new_state, StepOutput(loss=loss, correct=correct, lr=lr, terms=terms)

    return train_step


def _keep_excluded(tx: optax.GradientTransformation, update_mask: PyTree, new, old):
    """Takes `old` values wherever `update_mask` is 0, in the parameters and in every
    parameter-shaped part of the optimizer state.

    `where` rather than a multiply-add: the kept values are the old bits exactly (no
    `p - 0·d` rounding, no NaN from an infinite direction), which the tests rely on.

    Args:
        tx: the optimizer, used to locate the parameter-shaped subtrees of its state
            (`optax.tree_utils.tree_map_params`), so this works for any optax chain whose
            state holds parameter-shaped buffers, not just SGD momentum.
        update_mask: pytree like the parameters.
        new: (params, opt_state) after the step.
        old: (params, opt_state) before the step.

    Returns:
        (params, opt_state) with the excluded coordinates taken from `old`. Optimizer-state
        leaves that are not parameter-shaped (e.g. step counts) keep their new values.
    """
    (new_params, new_opt), (old_params, old_opt) = new, old

    def keep(u, n, o):
        return jnp.where(u != 0, n, o)

    params = jax.tree.map(keep, update_mask, new_params, old_params)
    # The update mask placed wherever the optimizer state holds a parameter-shaped tree and
    # None elsewhere; with None as a leaf, the non-parameter fields simply take their new values.
    masks = optax.tree_utils.tree_map_params(
        tx, lambda _, u: u, old_opt, update_mask, transform_non_params=lambda _: None
    )
    opt_state = jax.tree.map(
        lambda u, n, o: n if u is None else keep(u, n, o),
        masks,
        new_opt,
        old_opt,
        is_leaf=lambda x: x is None,
    )
    return params, opt_state


def make_predict_step(
    model: nn.Module, *, mean: Sequence[float], std: Sequence[float], mesh: Mesh | None = None
):
    """Builds `predict_step(params, batch_stats, images) -> (logits, features)`.

    Inference mode: BatchNorm uses its running statistics, no augmentation.

    Args:
        model: as for `make_train_step`.
        mean: normalization mean.
        std: normalization standard deviation.
        mesh: when given, the batch is split over the mesh's data axis.

    Returns:
        The un-jitted step; `images: uint8[B, H, W, 3]` →
        `(logits float32[B, C], features float32[B, F])`.
    """

    def predict_step(params, batch_stats, images):
        if mesh is not None:
            images = jax.lax.with_sharding_constraint(images, sharding.batch_sharded(mesh))
        x = augment_lib.normalize(images, mean, std)
        variables = {"params": params, "batch_stats": batch_stats}
        logits, features = model.apply(variables, x, train=False)
        return logits.astype(jnp.float32), features.astype(jnp.float32)

    return predict_step
