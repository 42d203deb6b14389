"""An epoch's example order and how it is cut into calls of equal shape."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def largest_divisor_at_most(n: int, limit: int) -> int:
    """The largest d ≤ limit dividing n (so every call of an epoch has the same shape)."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def epoch_order(key: jax.Array, num: int, steps: int, batch_size: int) -> jax.Array:
    """int32[steps, batch_size]: a random permutation of range(num), truncated to full
    batches (the remainder, different each epoch, is dropped so every step has one shape)."""
    perm = jax.random.permutation(key, num)[: steps * batch_size]
    return perm.reshape(steps, batch_size).astype(jnp.int32)
