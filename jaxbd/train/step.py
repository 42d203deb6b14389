"""The jitted train and inference steps.

`make_train_step` builds one pure function `train_step(state, images, labels, weights)` over a
global batch. Everything that changes between phases of an experiment — the data, the
per-example loss weights, the pruning mask, the learning-rate schedule — is an argument or
part of the state, never a Python constant, so a new IMP round or a new coreset reuses the
compiled step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxbd.data import augment as augment_lib
from jaxbd.train import sharding
from jaxbd.train.state import TrainState


class StepOutput(NamedTuple):
    """What one train step reports (kept on device until a log step).

    Attributes:
        loss: float32 scalar, the weighted mean cross-entropy that was minimized.
        correct: bool[B], whether each example's augmented view was classified correctly
            (the per-presentation signal forgetting scores need).
        lr: float32 scalar, the learning rate used for this step.
    """

    loss: jax.Array
    correct: jax.Array
    lr: jax.Array


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    crop_padding: int = 4,
    flip: bool = True,
    mesh: Mesh | None = None,
):
    """Builds `train_step(state, images, labels, weights) -> (state, StepOutput)`.

    The step augments on the device (random crop with zero padding, horizontal flip; one key
    per example, derived from `fold_in(state.rng, state.step)`), normalizes, computes the
    per-example cross-entropy, minimizes `mean(weights · ce)`, masks the gradient, takes an SGD
    step with the scheduled learning rate and re-applies the mask, so pruned weights stay
    exactly zero.

    Args:
        model: a module called as `model.apply(vars, x, train=True)` returning
            `(logits, features)`.
        tx: the direction transformation (`optimizer.sgd_direction`).
        mean: per-channel normalization mean (in [0, 1] pixel units).
        std: per-channel normalization standard deviation.
        crop_padding: zero padding of the random crop; 0 disables cropping.
        flip: random horizontal flips.
        mesh: when given, the batch is constrained to be split over the mesh's data axis.

    Returns:
        The un-jitted step; `images: uint8[B, H, W, 3]`, `labels: int32[B]`,
        `weights: float32[B]` (per-example loss weights; 1 for plain training).
    """

    def train_step(state: TrainState, images, labels, weights):
        if mesh is not None:
            images, labels, weights = jax.lax.with_sharding_constraint(
                (images, labels, weights), sharding.batch_sharded(mesh)
            )
        key = jax.random.fold_in(state.rng, state.step)
        if crop_padding or flip:
            images = augment_lib.augment(key, images, crop_padding=crop_padding, flip=flip)
        x = augment_lib.normalize(images, mean, std)

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            (logits, _), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
            per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            loss = jnp.mean(weights * per_example)
            return loss, (logits, updates.get("batch_stats", state.batch_stats))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        grads = jax.tree.map(jnp.multiply, grads, state.mask)
        direction, opt_state = tx.update(grads, state.opt_state, state.params)
        lr = state.schedule(state.step)
        params = jax.tree.map(
            lambda p, d, m: (p - lr * d.astype(p.dtype)) * m, state.params, direction, state.mask
        )
        new_state = state.replace(
            params=params, batch_stats=batch_stats, opt_state=opt_state, step=state.step + 1
        )
        correct = jnp.argmax(logits, axis=-1) == labels
        return new_state, StepOutput(loss=loss, correct=correct, lr=lr)

    return train_step


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
