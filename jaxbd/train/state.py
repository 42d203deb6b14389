"""The train state: everything a training run carries from step to step, as one pytree."""

from __future__ import annotations

import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxbd.train.schedule import CosineSchedule
from jaxbd.types import PyTree


@flax.struct.dataclass
class TrainState:
    """Model variables, optimizer state and the bookkeeping of one run.

    Attributes:
        params: float32 parameters.
        batch_stats: float32 BatchNorm running statistics.
        opt_state: state of the optax direction transformation (momentum buffers).
        mask: pytree of the structure of `params`; 1 keeps a weight, 0 prunes it. All ones
            when dense. Stored as float32 so applying it is one multiply.
        step: int32 scalar, steps taken under the current schedule.
        rng: typed PRNG key; the augmentation key of step t is `fold_in(rng, t)`.
        schedule: the learning-rate schedule as data.
    """

    params: PyTree
    batch_stats: PyTree
    opt_state: optax.OptState
    mask: PyTree
    step: jax.Array
    rng: jax.Array
    schedule: CosineSchedule


def dense_mask(params: PyTree) -> PyTree:
    """An all-ones float32 mask with the structure of `params`."""
    return jax.tree.map(lambda p: jnp.ones(p.shape, jnp.float32), params)


def init_variables(model: nn.Module, key: jax.Array, image_shape: tuple[int, int, int]):
    """Initializes a model's `params` and `batch_stats` for images of shape (H, W, 3).

    The jitted initializer is compiled once per model and image shape (flax modules hash by
    their fields): initializing ResNet-18 compiles for seconds on the CPU, and every
    pretraining member, IMP control and seed of a sweep initializes a fresh model. `model`
    is any hashable object with flax's `init(key, x, train=False)` (not type-checked).
    """
    variables = _initializer(model, tuple(image_shape))(key)
    return variables["params"], variables.get("batch_stats", {})


@functools.cache
def _initializer(model: nn.Module, image_shape: tuple[int, int, int]):
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    return jax.jit(lambda key: model.init(key, dummy, train=False))


def create_train_state(
    params: PyTree,
    batch_stats: PyTree,
    tx: optax.GradientTransformation,
    schedule: CosineSchedule,
    rng: jax.Array,
    mask: PyTree | None = None,
) -> TrainState:
    """Builds a fresh train state (step 0, new optimizer state).

    Args:
        params: model parameters.
        batch_stats: BatchNorm statistics (empty dict for models without BatchNorm).
        tx: the optimizer direction transformation (see `optimizer.sgd_direction`).
        schedule: the learning-rate schedule.
        rng: typed PRNG key for augmentation.
        mask: optional pruning mask (bool or float pytree like `params`); dense if None.
            The parameters are multiplied by it so pruned weights start at exactly zero.
    """
    mask = (
        dense_mask(params)
        if mask is None
        # A copy: the state's buffers are donated by the train step, and the caller's mask
        # must survive that (e.g. a rewind point or a defense's returned model).
        else jax.tree.map(lambda m: jnp.array(m, jnp.float32, copy=True), mask)
    )
    params = jax.tree.map(lambda p, m: p * m, params, mask)
    return TrainState(
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        mask=mask,
        step=jnp.zeros((), jnp.int32),
        rng=rng,
        schedule=schedule,
    )
