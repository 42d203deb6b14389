"""Random draws of the attacks that weaken their training trigger.

Adaptive-Blend and Adaptive-Patch (Qi, Xie, Li, Mahloujifar, Mittal 2023, "Revisiting the
assumption of latent separability for backdoor defenses") give each poisoned training image a
random subset of the trigger's pieces (`sample_kept_pieces`) and keep the true label of a
random share of the poisons, the regularization samples (`regularized_labels`). Both draw
their uniforms with `uniform`, as does WaNet's noise mode.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def sample_kept_pieces(
    key: jax.Array,
    batch_shape: tuple[int, ...],
    num_pieces: int,
    drop_probability: float,
    keep_pieces: int | None = None,
) -> jax.Array:
    """Which trigger pieces each poisoned training image gets.

    Args:
        key: PRNG key.
        batch_shape: leading shape of the images (`()` for a single image under `vmap`).
        num_pieces: number of pieces.
        drop_probability: with `keep_pieces=None`, each piece is dropped independently with
            this probability, except that an image whose draws would drop every piece keeps
            the one with the largest draw: a poison always carries part of the trigger
            (otherwise it would be a plain mislabelled image, teaching no trigger at all).
        keep_pieces: if given, exactly this many pieces per image, uniformly without
            replacement (ranks of i.i.d. uniforms: a random permutation per image).

    Returns:
        bool[*batch_shape, num_pieces], True for kept pieces.
    """
    draws = uniform(key, (*batch_shape, num_pieces))
    if keep_pieces is None:
        kept = draws >= drop_probability
        largest = jnp.argmax(draws, axis=-1)[..., None] == jnp.arange(num_pieces)
        return kept | (~jnp.any(kept, axis=-1, keepdims=True) & largest)
    ranks = jnp.argsort(jnp.argsort(draws, axis=-1), axis=-1)
    return ranks < keep_pieces


def regularized_labels(
    key: jax.Array, labels: jax.Array, target: int, conservatism: float
) -> jax.Array:
    """Training labels: the true label with probability `conservatism`, else `target`.

    Args:
        key: PRNG key.
        labels: int[...] true labels.
        target: the target class.
        conservatism: probability of a regularization sample, per example.

    Returns:
        Labels of the same shape and dtype.
    """
    regularization = uniform(key, labels.shape) < conservatism
    return jnp.where(regularization, labels, jnp.asarray(target, labels.dtype))


def uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32[*shape] i.i.d. uniform in [0, 1), drawn as a flat vector and reshaped.

    Same distribution as `jax.random.uniform(key, shape)`, but XLA:CPU compiles the
    threefry generator for a multi-dimensional shape much more slowly, which adds up across
    attacks, image sizes and tests.
    """
    return jax.random.uniform(key, (math.prod(shape),)).reshape(shape)
