"""Greedy facility-location maximization on the accelerator (the core of CRAIG).

CRAIG (Mirzasoleiman, Bilmes, Leskovec 2020) picks, in each class, the medoids that greedily
maximize F(S) = Σ_i max_{j∈S} s_ij with s_ij = d_max − ‖g_i − g_j‖ over the examples'
gradient proxies, and weights each medoid by the size of its cluster. This module is the
public entry point (validation, and the grouping of many blocks into batches of one shape);
the similarity blocks are `jaxbd.select.similarity`'s, the greedy loops
`jaxbd.select.greedy`'s, the objective for checking a selection `jaxbd.select.fl_objective`'s.

A block's n×n similarity matrix is materialized on the device when it fits
`max_matrix_bytes`, streamed from the proxies otherwise; the host never holds one. Memory,
padding and batching in detail: docs/selection.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from jaxbd.select.base import Selection, make_selection
from jaxbd.select.fl_batches import Greedy, run_blocks
from jaxbd.select.fl_objective import facility_location_objective, similarity_matrix
from jaxbd.select.greedy import GREEDY
from jaxbd.select.similarity import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_ROW_CHUNK,
    OuterProduct,
    as_factors,
    check_pow2,
    num_rows,
)

__all__ = [
    "CPU_LAZY_BATCH",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_LAZY_BATCH",
    "DEFAULT_MAX_MATRIX_BYTES",
    "GREEDY",
    "Greedy",
    "OuterProduct",
    "facility_location",
    "facility_location_groups",
    "facility_location_objective",
    "greedy_facility_location",
    "similarity_matrix",
]

GREEDY_VARIANTS = GREEDY  # the former name
DEFAULT_LAZY_BATCH = DEFAULT_ROW_CHUNK
CPU_LAZY_BATCH = 8
"""Lazy greedy's re-evaluation batch when `lazy_batch=None`: wide batches keep an accelerator
busy; on the CPU a pick usually needs only a few fresh gains, and 8 measured fastest
(BENCHMARKS.md)."""
DEFAULT_MAX_MATRIX_BYTES = 1 << 30


# ---------------------------------------------------------------------------------------------
# Host-side validation.


def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer)


def _check_options(greedy, epsilon, block_size, lazy_batch, blocks_per_call, max_matrix_bytes):
    """Validates the settings; returns (block_size, lazy_batch, blocks_per_call or None)."""
    if greedy not in GREEDY:
        raise ValueError(f"greedy must be one of {GREEDY}, got {greedy!r}")
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, int | float | np.floating)
        or not 0.0 < epsilon < 1.0
    ):
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon!r}")
    block_size = check_pow2("block_size", block_size)
    on_cpu = jax.default_backend() == "cpu"
    if lazy_batch is None:
        lazy_batch = CPU_LAZY_BATCH if on_cpu else DEFAULT_LAZY_BATCH
    lazy_batch = check_pow2("lazy_batch", lazy_batch)
    if blocks_per_call is None:
        blocks_per_call = 1 if on_cpu else None  # None: all blocks
    elif not _is_int(blocks_per_call) or blocks_per_call < 1:
        raise ValueError(f"blocks_per_call must be None or an int >= 1, got {blocks_per_call!r}")
    if not _is_int(max_matrix_bytes):
        raise ValueError(f"max_matrix_bytes must be an int, got {max_matrix_bytes!r}")
    return block_size, lazy_batch, blocks_per_call


def _check_groups(groups, budgets, rows: int) -> tuple[list[np.ndarray], list]:
    """Each group's row indices (flattened) and its budget, validated against `rows`."""
    groups = [np.asarray(g).reshape(-1) for g in groups]
    budgets = list(budgets)
    if len(budgets) != len(groups):
        raise ValueError(f"{len(budgets)} budgets for {len(groups)} groups")
    for b, (g, budget) in enumerate(zip(groups, budgets, strict=True)):
        if g.size and not np.issubdtype(g.dtype, np.integer):
            raise ValueError(f"group {b}: row indices must be integers, got {g.dtype}")
        if g.size and (g.min() < 0 or g.max() >= rows):
            raise ValueError(f"group {b}: row indices must be in [0, {rows})")
        if np.unique(g).size != g.size:
            raise ValueError(f"group {b}: row indices must be distinct")
        if not _is_int(budget) or not 0 <= budget <= g.size:
            raise ValueError(f"group {b}: budget must be an int in [0, {g.size}], got {budget!r}")
    return groups, budgets


def _check_keys(greedy: str, keys, num_groups: int) -> None:
    if greedy != "stochastic":
        return
    if keys is None:
        raise ValueError("stochastic greedy needs a PRNG key, e.g. key=jax.random.key(0); got None")
    if len(keys) != num_groups:
        raise ValueError(f"{len(keys)} keys for {num_groups} groups")


# ---------------------------------------------------------------------------------------------
# Public API.


def facility_location_groups(
    features,
    groups: Sequence,
    budgets: Sequence[int],
    *,
    greedy: str = "exact",
    keys: Sequence[jax.Array] | None = None,
    epsilon: float = 0.1,
    block_size: int = DEFAULT_BLOCK_SIZE,
    lazy_batch: int | None = None,
    max_matrix_bytes: int = DEFAULT_MAX_MATRIX_BYTES,
    blocks_per_call: int | None = None,
) -> list[Greedy]:
    """Independent greedy facility-location runs on several blocks of one proxy array.

    Each block (e.g. one class) has its own d_max, similarity matrix and budget. Blocks are
    padded to one common size and processed as many at a time as fit `max_matrix_bytes`
    (one jitted call per batch, all batches dispatched before any result is fetched).

    Args:
        features: float[N, d] gradient proxies, or an `OuterProduct` of float[N, p] and
            float[N, q] factors.
        groups: sequence of int[n_b] row indices into `features`, one per block (distinct
            within a block).
        budgets: int per block, in [0, n_b]; a block with budget 0 is skipped.
        greedy: "exact", "lazy" or "stochastic" (`GREEDY`).
        keys: one PRNG key per block; required for stochastic greedy, ignored otherwise.
        epsilon: stochastic greedy's ε in (0, 1).
        block_size: power of two; blocks are padded to a multiple of it (or of the next power
            of two ≥ the largest block, if smaller).
        lazy_batch: power of two; how many stale candidates lazy greedy re-evaluates at once,
            also the row-chunk of the streamed path. None: `CPU_LAZY_BATCH` on the CPU,
            `DEFAULT_LAZY_BATCH` elsewhere.
        max_matrix_bytes: device memory for materialized float32 similarity matrices (peak
            use is about twice this). Blocks whose n_pad² · 4 bytes exceed it are streamed.
        blocks_per_call: at most this many materialized blocks per jitted call (under
            `vmap`; never more than fit `max_matrix_bytes`). None: 1 on the CPU, where
            XLA runs one block at a time no slower and a batch of blocks would wait in every
            lazy-greedy step for its slowest block; as many as fit elsewhere. Picks can
            differ in the last bits of near-tied gains between settings, because a batched
            matrix product may sum in another order.

    Returns:
        One `Greedy` per block, with `order` holding rows of `features`.

    Raises:
        ValueError: for bad features, groups, budgets or settings.
    """
    factors = as_factors(features)
    block_size, lazy_batch, blocks_per_call = _check_options(
        greedy, epsilon, block_size, lazy_batch, blocks_per_call, max_matrix_bytes
    )
    groups, budgets = _check_groups(groups, budgets, num_rows(factors))
    _check_keys(greedy, keys, len(groups))
    return run_blocks(
        factors,
        groups,
        budgets,
        keys,
        greedy=greedy,
        epsilon=epsilon,
        block_size=block_size,
        lazy_batch=lazy_batch,
        blocks_per_call=blocks_per_call,
        max_matrix_bytes=max_matrix_bytes,
    )


def greedy_facility_location(
    features,
    budget: int,
    *,
    greedy: str = "exact",
    key: jax.Array | None = None,
    epsilon: float = 0.1,
    block_size: int = DEFAULT_BLOCK_SIZE,
    lazy_batch: int | None = None,
    max_matrix_bytes: int = DEFAULT_MAX_MATRIX_BYTES,
    blocks_per_call: int | None = None,
) -> Greedy:
    """Greedy facility location on one block, with picks and gains in pick order.

    Args:
        features: float[n, d] gradient proxies, or an `OuterProduct` of float[n, p] and
            float[n, q] factors.
        budget: the number of picks k, in [1, n].
        greedy: "exact", "lazy" (identical picks to exact, faster) or "stochastic".
        key: PRNG key, required for stochastic greedy (ignored otherwise).
        epsilon: stochastic greedy's ε in (0, 1).
        block_size, lazy_batch, max_matrix_bytes, blocks_per_call: see
            `facility_location_groups`.

    Returns:
        A `Greedy` whose `order` holds positions 0..n-1 in the block.

    Raises:
        ValueError: for a budget outside [1, n], bad features or bad settings.
    """
    factors = as_factors(features)
    n = num_rows(factors)
    if not _is_int(budget) or not 1 <= budget <= n:
        raise ValueError(f"budget must be an int in [1, n={n}], got {budget!r}")
    features = factors[0] if len(factors) == 1 else OuterProduct(*factors)
    (result,) = facility_location_groups(
        features,
        [np.arange(n)],
        [int(budget)],
        greedy=greedy,
        keys=None if key is None else [key],
        epsilon=epsilon,
        block_size=block_size,
        lazy_batch=lazy_batch,
        max_matrix_bytes=max_matrix_bytes,
        blocks_per_call=blocks_per_call,
    )
    return result


def facility_location(
    features,
    budget: int,
    *,
    greedy: str = "exact",
    key: jax.Array | None = None,
    epsilon: float = 0.1,
    block_size: int = DEFAULT_BLOCK_SIZE,
    lazy_batch: int | None = None,
    max_matrix_bytes: int = DEFAULT_MAX_MATRIX_BYTES,
    blocks_per_call: int | None = None,
) -> Selection:
    """Greedy facility-location subset of one block, weighted by cluster sizes.

    Args:
        features: float[n, d] gradient proxies, or an `OuterProduct` of float[n, p] and
            float[n, q] factors (distances by the kernel identity).
        budget: the subset size k, in [1, n].
        greedy: "exact", "lazy" (identical picks to exact, faster) or "stochastic".
        key: PRNG key, required for stochastic greedy (ignored otherwise).
        epsilon: stochastic greedy's ε in (0, 1).
        block_size, lazy_batch, max_matrix_bytes, blocks_per_call: see
            `facility_location_groups`.

    Returns:
        A `Selection` of positions 0..n-1 in increasing order, with weights γ_j (cluster
        sizes, ties to the earliest pick) summing to n.

    Raises:
        ValueError: for a budget outside [1, n], bad features or bad settings.
    """
    result = greedy_facility_location(
        features,
        budget,
        greedy=greedy,
        key=key,
        epsilon=epsilon,
        block_size=block_size,
        lazy_batch=lazy_batch,
        max_matrix_bytes=max_matrix_bytes,
        blocks_per_call=blocks_per_call,
    )
    return make_selection(result.order, result.weights)
