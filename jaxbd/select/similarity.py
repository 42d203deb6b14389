"""Facility-location similarity blocks on the device: s_ij = d_max − ‖g_i − g_j‖.

For a block of n examples with gradient proxies g_i, the similarity of example i to a
candidate medoid j is s_ij = d_max − d_ij with d_ij = ‖g_i − g_j‖ (Euclidean) and d_max the
largest distance in the block, so that s_ij ≥ 0.

Gradient proxies are either a float array [n, d] or an `OuterProduct` of two factors (CRAIG's
last-layer weight gradient (p − onehot) ⊗ h), whose distances use the kernel identity
‖a⊗h − b⊗h'‖² = ‖a‖²‖h‖² + ‖b‖²‖h'‖² − 2(a·b)(h·h') and never materialize the product.

`similarity` gives row access to one block's similarity matrix, either materialized (n×n on
the device) or streamed (rows recomputed from the proxies when needed, memory O(n · chunk)).
Blocks are padded to a fixed size n_pad with masked padding rows, so every shape is static
and n is traced. Both paths compute a candidate's row, and its gain, to the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_HIGHEST = lax.Precision.HIGHEST  # TF32 matmuls on GPUs would perturb distances at ~1e-3.


class OuterProduct(NamedTuple):
    """Rows g_i = left_i ⊗ right_i, kept as their two factors (never materialized).

    Attributes:
        left: float[n, p], e.g. the softmax errors p_i − onehot(y_i).
        right: float[n, q], e.g. the penultimate features h_i.
    """

    left: jax.Array
    right: jax.Array


def as_factors(features) -> tuple[jax.Array, ...]:
    """Validated float32 factors: (x,) for a dense proxy, (left, right) for an outer product.

    Raises:
        ValueError: for a rank other than 2, non-real dtypes, no feature dimensions, factors
            with different row counts, or non-finite values.
    """
    if isinstance(features, OuterProduct):
        named = (("features.left", features.left), ("features.right", features.right))
    else:
        named = (("features", features),)
    factors = tuple(_as_factor(name, f) for name, f in named)
    if len(factors) == 2 and factors[0].shape[0] != factors[1].shape[0]:
        raise ValueError(
            f"outer-product factors disagree on n: {factors[0].shape[0]} vs {factors[1].shape[0]}"
        )
    if not all(bool(jnp.isfinite(f).all()) for f in factors):
        raise ValueError("features contain NaN or infinite values")
    return factors


def _as_factor(name: str, f) -> jax.Array:
    f = jnp.asarray(f)
    if f.ndim != 2:
        raise ValueError(f"{name} must have rank 2 [n, d], got shape {f.shape}")
    if not (jnp.issubdtype(f.dtype, jnp.floating) or jnp.issubdtype(f.dtype, jnp.integer)):
        raise ValueError(f"{name} must be real numbers, got dtype {f.dtype}")
    if f.shape[1] == 0:
        raise ValueError(f"{name} has no feature dimensions (shape {f.shape})")
    return f.astype(jnp.float32)


def num_rows(factors) -> int:
    """n, the number of examples of validated factors."""
    return int(factors[0].shape[0])


def _prepare(factors, n):
    """Masks padding rows, centers dense proxies and returns per-row squared norms.

    Args:
        factors: tuple of float32[n_pad, d_f].
        n: int32 scalar, the number of valid (leading) rows.

    Returns:
        (factors, sqnorms float32[n_pad], valid bool[n_pad]).
    """
    n_pad = factors[0].shape[0]
    valid = jnp.arange(n_pad) < n
    factors = tuple(jnp.where(valid[:, None], f, 0.0) for f in factors)
    if len(factors) == 1:
        # Distances are translation invariant; centering shrinks ‖x‖² in the Gram identity
        # below and with it the cancellation error of ‖x‖² + ‖y‖² − 2x·y.
        x = factors[0]
        mean = jnp.sum(x, axis=0) / jnp.maximum(n, 1).astype(jnp.float32)
        factors = (jnp.where(valid[:, None], x - mean, 0.0),)
    sqnorms = math.prod(jnp.sum(f * f, axis=1) for f in factors)
    return factors, sqnorms, valid


@jax.custom_batching.custom_vmap
def take_rows(matrix, idx):
    """matrix[idx] for a [n, ...] matrix and int32[L] row indices -> [L, ...]."""
    return jnp.take(matrix, idx, axis=0, mode="clip")


@take_rows.def_vmap
def _take_rows_vmap(axis_size, in_batched, matrix, idx):
    # vmap would turn a batched row gather into a gather with batching dimensions, which
    # XLA:CPU expands into a loop over the L·B rows (10x slower than everything else in a
    # lazy-greedy step on CIFAR-10 classes). Rows of a flattened [B·n, ...] matrix are one
    # plain gather.
    matrix_batched, idx_batched = in_batched
    if not matrix_batched:
        return jnp.take(matrix, idx, axis=0, mode="clip"), idx_batched
    if not idx_batched:
        idx = jnp.broadcast_to(idx, (axis_size, *idx.shape))
    n = matrix.shape[1]
    flat = matrix.reshape(axis_size * n, *matrix.shape[2:])
    offsets = (jnp.arange(axis_size, dtype=idx.dtype) * n).reshape(-1, *(1,) * (idx.ndim - 1))
    return jnp.take(flat, idx + offsets, axis=0, mode="clip"), True


def _distances(factors, sqnorms, rows):
    """Euclidean distances from candidates `rows` to every example, via the Gram identity.

    For an outer product the Gram matrix is the product of the factors' Gram matrices:
    ⟨a⊗h, b⊗h'⟩ = (a·b)(h·h').

    Args:
        factors: tuple of float32[n_pad, d_f] (from `_prepare`).
        sqnorms: float32[n_pad] squared norms of the proxies.
        rows: int32[L] candidate indices, or None for all n_pad rows.

    Returns:
        float32[L, n_pad] distances; exactly 0 where a candidate meets itself.
    """
    n_pad = factors[0].shape[0]
    rows_idx = jnp.arange(n_pad) if rows is None else rows
    gram = math.prod(
        jnp.dot(f if rows is None else take_rows(f, rows), f.T, precision=_HIGHEST) for f in factors
    )
    row_sq = sqnorms if rows is None else sqnorms[rows]
    d2 = row_sq[:, None] + sqnorms[None, :] - 2.0 * gram
    d = jnp.sqrt(jnp.maximum(d2, 0.0))
    return jnp.where(rows_idx[:, None] == jnp.arange(n_pad)[None, :], 0.0, d)


def _pairwise_sum(x):
    """Sums the last axis in a fixed pairwise order: x[..., 0::2] + x[..., 1::2], repeated.

    XLA chooses the order of a `reduce` per shape (the row count included), so the same row
    summed inside a [n_pad, n_pad] and a [32, n_pad] array can differ in the last bit. These
    elementwise adds are exact IEEE operations XLA does not reorder, so a row's sum depends
    only on the row — on every backend. Pairwise summation is also more accurate than a
    sequential one (error O(log n) instead of O(n) ulps).
    """
    while x.shape[-1] > 1:
        if x.shape[-1] % 2:
            x = jnp.concatenate([x, jnp.zeros_like(x[..., :1])], axis=-1)
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def gains(rows, cur):
    """Marginal gains Σ_i max(0, s_ji − cur_i) of candidate rows s_j· [L, n_pad] -> [L].

    A candidate's gain is the same number whichever greedy variant computes it, in whatever
    batch (see `_pairwise_sum`); lazy greedy's equality with exact greedy, ties included,
    rests on this, and on the gains being monotone in `cur` (IEEE subtraction, max and
    addition are).
    """
    return _pairwise_sum(jnp.maximum(rows - cur[None, :], 0.0))


class Similarity(NamedTuple):
    """Row access to the n_pad×n_pad similarity S[j, i] = s_ij of one block (candidate j).

    Attributes:
        rows: int32[L] candidates -> float32[L, n_pad] their similarity rows (0 on padding).
        all_gains: float32[n_pad] coverage cur -> float32[n_pad] every candidate's gain.
        valid: bool[n_pad], the block's real (non-padding) rows.
    """

    rows: Callable
    all_gains: Callable
    valid: jax.Array


def similarity(factors, n, *, materialize: bool, chunk: int) -> Similarity:
    """One padded block's similarity rows (call inside a jitted function).

    Args:
        factors: tuple of float32[n_pad, d_f], the block's proxies (rows ≥ n are padding).
        n: int32 scalar, the number of valid rows.
        materialize: build the n_pad×n_pad matrix once; else recompute rows when asked.
        chunk: the streamed path's row chunk (a divisor of n_pad).
    """
    factors, sqnorms, valid = _prepare(factors, n)
    if materialize:
        return _materialized(factors, sqnorms, valid)
    return _streamed(factors, sqnorms, valid, chunk)


def _materialized(factors, sqnorms, valid) -> Similarity:
    d = _distances(factors, sqnorms, None)
    pair_valid = valid[:, None] & valid[None, :]
    d_max = jnp.max(jnp.where(pair_valid, d, 0.0))
    s = jnp.where(pair_valid, d_max - d, 0.0)
    return Similarity(
        rows=lambda idx: take_rows(s, idx),
        all_gains=lambda cur: gains(s, cur),
        valid=valid,
    )


def _streamed(factors, sqnorms, valid, chunk) -> Similarity:
    n_pad = valid.shape[0]
    chunks = jnp.arange(n_pad, dtype=jnp.int32).reshape(-1, chunk)

    def chunk_max(idx):
        d = _distances(factors, sqnorms, idx)
        return jnp.max(jnp.where(valid[idx][:, None] & valid[None, :], d, 0.0))

    d_max = jnp.max(lax.map(chunk_max, chunks))

    def rows(idx):
        d = _distances(factors, sqnorms, idx)
        return jnp.where(valid[idx][:, None] & valid[None, :], d_max - d, 0.0)

    def all_gains(cur):
        # Aligned chunks, the same ones lazy greedy re-evaluates: identical distances.
        return lax.map(lambda idx: gains(rows(idx), cur), chunks).reshape(-1)

    return Similarity(rows=rows, all_gains=all_gains, valid=valid)


# ---------------------------------------------------------------------------------------------
# Padding: blocks are padded to a multiple of a power-of-two block size, so that blocks of
# similar size share one compilation.

DEFAULT_BLOCK_SIZE = 256
"""Default padding granularity of a block (`block_size=`)."""
DEFAULT_ROW_CHUNK = 32
"""Default number of similarity rows computed at once (lazy greedy's batch off the CPU)."""


def next_pow2(x: int) -> int:
    """The smallest power of two ≥ x (1 for x ≤ 1)."""
    return 1 << max(0, int(x) - 1).bit_length()


def check_pow2(name: str, value) -> int:
    """`value` as an int, if it is a positive power of two; else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive power of two, got {value!r}")
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two, got {value}")
    return int(value)


def padded_size(n: int, block_size: int) -> tuple[int, int]:
    """(n_pad, block): n rounded up to a multiple of block = min(block_size, next pow2 ≥ n)."""
    block = min(block_size, next_pow2(n))
    return -(-n // block) * block, block
