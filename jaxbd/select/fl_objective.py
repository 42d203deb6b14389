"""Evaluating facility location: a block's similarity matrix and the objective F(S) of a subset.

Tools for tests, benchmarks and reports, on the same device code as the greedy
(`jaxbd.select.similarity`), so that their numbers are the greedy's numbers.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbd.select.similarity import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_ROW_CHUNK,
    as_factors,
    check_pow2,
    num_rows,
    padded_size,
    similarity,
)


@jax.jit
def _similarity_matrix(factors, n):
    sim = similarity(factors, n, materialize=True, chunk=1)
    return sim.rows(jnp.arange(factors[0].shape[0]))


def similarity_matrix(features, *, block_size: int = DEFAULT_BLOCK_SIZE) -> jax.Array:
    """The block's similarity matrix S[j, i] = s_ij = d_max − d_ij, materialized on the device.

    For tests, benchmarks and small blocks: it is n×n. `S[j]` is candidate j's similarity to
    every example (the orientation apricot's precomputed facility location expects); S is
    symmetric up to rounding.

    Args:
        features: float[n, d] proxies or an `OuterProduct`.
        block_size: padding granularity (see `facility_location_groups`).

    Returns:
        float32[n, n] on the device.
    """
    factors = as_factors(features)
    n = num_rows(factors)
    n_pad, _ = padded_size(n, check_pow2("block_size", block_size))
    padded = tuple(jnp.pad(f, ((0, n_pad - n), (0, 0))) for f in factors)
    return _similarity_matrix(padded, jnp.int32(n))[:n, :n]


@partial(jax.jit, static_argnames=("chunk",))
def _coverage(factors, n, picks, num_picks, *, chunk):
    sim = similarity(factors, n, materialize=False, chunk=chunk)

    def cover(cur, idx_and_pos):
        idx, pos = idx_and_pos
        rows = jnp.where((pos < num_picks)[:, None], sim.rows(idx), 0.0)
        return jnp.maximum(cur, jnp.max(rows, axis=0)), None

    cur0 = jnp.zeros(sim.valid.shape[0], jnp.float32)
    positions = jnp.arange(picks.size, dtype=jnp.int32).reshape(-1, chunk)
    cur, _ = lax.scan(cover, cur0, (picks.reshape(-1, chunk), positions))
    return jnp.where(sim.valid, cur, 0.0)


def facility_location_objective(
    features,
    indices,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    chunk: int = DEFAULT_ROW_CHUNK,
) -> float:
    """F(S) = Σ_i max_{j∈S} s_ij of a subset of one block, computed blockwise on the device.

    Streams the similarity rows in chunks (no n×n matrix anywhere); d_max is the largest
    distance in the whole block, as in the greedy.

    Args:
        features: float[n, d] proxies or an `OuterProduct`.
        indices: int[k] positions of S in the block (0 ≤ index < n); empty gives 0.
        block_size: padding granularity (see `facility_location_groups`).
        chunk: power of two; similarity rows computed at once.

    Returns:
        F(S) as a Python float (per-example coverage summed in float64).

    Raises:
        ValueError: for bad features or indices out of range.
    """
    factors = as_factors(features)
    n = num_rows(factors)
    indices = np.asarray(indices).reshape(-1)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be integers, got {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(f"indices must be in [0, {n}), got [{indices.min()}, {indices.max()}]")
    if indices.size == 0:
        return 0.0
    n_pad, block = padded_size(n, check_pow2("block_size", block_size))
    chunk = min(check_pow2("chunk", chunk), block)  # divides n_pad
    padded = tuple(jnp.pad(f, ((0, n_pad - n), (0, 0))) for f in factors)
    k_pad = -(-indices.size // chunk) * chunk
    picks = np.zeros(k_pad, np.int32)
    picks[: indices.size] = indices
    cur = _coverage(padded, jnp.int32(n), jnp.asarray(picks), jnp.int32(indices.size), chunk=chunk)
    return float(np.sum(np.asarray(cur, np.float64)))
