"""Running greedy facility location on many blocks: padding and batching into jitted calls.

The blocks of one `facility_location_groups` call (e.g. the classes of a dataset) are padded
to one common size n_pad, so that every jitted call has the same shape and compiles once;
when their similarity matrices fit the memory budget, several blocks run per call under
`vmap`. Every call is dispatched before any result is fetched, so the device never waits
for the host between blocks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.select.greedy import greedy_groups
from jaxbd.select.similarity import next_pow2, padded_size


class Greedy(NamedTuple):
    """The picks of one greedy run, in the order they were made.

    Attributes:
        order: int32[k] picked rows, in pick order.
        gains: float32[k] marginal gain of each pick; their sum is F(S).
        weights: float32[k] cluster size γ of each pick; they sum to the block size.
    """

    order: np.ndarray
    gains: np.ndarray
    weights: np.ndarray


_EMPTY = Greedy(np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.float32))


def run_blocks(
    factors,
    groups: list[np.ndarray],
    budgets: list[int],
    keys,
    *,
    greedy: str,
    epsilon: float,
    block_size: int,
    lazy_batch: int,
    blocks_per_call: int | None,
    max_matrix_bytes: int,
) -> list[Greedy]:
    """One greedy run per block on validated inputs (see `facility_location_groups`).

    Args:
        factors: tuple of float32[N, d_f], the validated proxies.
        groups: int[n_b] row indices per block.
        budgets: int per block in [0, n_b]; blocks with budget 0 get an empty `Greedy`.
        keys: one PRNG key per block for stochastic greedy, else None.
        blocks_per_call: at most this many blocks per call; None: as many as fit.
        greedy, epsilon, block_size, lazy_batch, max_matrix_bytes: validated settings.

    Returns:
        One `Greedy` per block, with `order` holding rows of `factors`.
    """
    results = [_EMPTY] * len(groups)
    active = [b for b, budget in enumerate(budgets) if budget > 0]
    if not active:
        return results
    plan = _plan(
        groups,
        budgets,
        active,
        greedy=greedy,
        epsilon=epsilon,
        block_size=block_size,
        lazy_batch=lazy_batch,
        blocks_per_call=blocks_per_call,
        max_matrix_bytes=max_matrix_bytes,
    )
    keys = keys if greedy == "stochastic" else None
    _collect(_dispatch(factors, plan, groups, budgets, keys, greedy), groups, budgets, results)
    return results


class _Plan(NamedTuple):
    """How the active blocks are padded and batched (one compiled shape for all calls)."""

    active: list[int]  # blocks with a budget > 0
    sizes: dict[int, int]  # block -> n
    samples: dict[int, int]  # block -> stochastic greedy's sample size m
    n_pad: int
    chunk: int
    materialize: bool
    per_call: int
    sample_pad: int


def _plan(
    groups,
    budgets,
    active,
    *,
    greedy,
    epsilon,
    block_size,
    lazy_batch,
    blocks_per_call,
    max_matrix_bytes,
) -> _Plan:
    n_pad, block = padded_size(max(groups[b].size for b in active), block_size)
    matrix_bytes = n_pad * n_pad * 4
    materialize = matrix_bytes <= max_matrix_bytes
    fit = max(1, max_matrix_bytes // matrix_bytes)
    limit = len(active) if blocks_per_call is None else blocks_per_call
    sizes = {b: groups[b].size for b in active}
    # Stochastic greedy's sample size s = ⌈(n/k)·ln(1/ε)⌉ (at most n), padded to a power of two.
    samples = {
        b: min(sizes[b], math.ceil(sizes[b] / budgets[b] * math.log(1 / epsilon))) for b in active
    }
    return _Plan(
        active=active,
        sizes=sizes,
        samples=samples,
        n_pad=n_pad,
        chunk=min(lazy_batch, block),  # divides n_pad: both are powers of two
        materialize=materialize,
        per_call=min(len(active), fit, limit) if materialize else 1,
        # (Only stochastic greedy's programs depend on it: the others compile once per shape.)
        sample_pad=min(n_pad, next_pow2(max(samples.values()))) if greedy == "stochastic" else 1,
    )


def _call_inputs(plan: _Plan, batch, groups, budgets, keys):
    """One call's padded rows int32[g, n_pad], n, k, m int32[g] and keys (or None).

    The last batch is padded with empty blocks (n = 0, k = 0) so every call has one shape.
    """
    padded = batch + [None] * (plan.per_call - len(batch))
    rows = np.zeros((plan.per_call, plan.n_pad), np.int32)
    n, k, m = (np.zeros(plan.per_call, np.int32) for _ in range(3))
    for i, b in enumerate(padded):
        if b is None:
            continue
        rows[i, : plan.sizes[b]] = groups[b]
        n[i], k[i], m[i] = plan.sizes[b], budgets[b], plan.samples[b]
    batch_keys = None
    if keys is not None:
        batch_keys = jnp.stack([keys[b if b is not None else batch[0]] for b in padded])
    return rows, n, k, m, batch_keys


@jax.jit
def _gather_blocks(factors, rows):
    """Each block's proxy rows: float32[N, d_f] and int32[g, n_pad] -> float32[g, n_pad, d_f]."""
    return tuple(f[rows] for f in factors)


def _dispatch(factors, plan: _Plan, groups, budgets, keys, greedy: str) -> list:
    """Launches every batch's greedy call; returns (batch, device outputs) pairs, unfetched."""
    pending = []
    for start in range(0, len(plan.active), plan.per_call):
        batch = plan.active[start : start + plan.per_call]
        rows, n, k, m, batch_keys = _call_inputs(plan, batch, groups, budgets, keys)
        # Gathered outside the greedy's jit, whose compilations then depend on the block
        # shapes only, not on N.
        out = greedy_groups(
            _gather_blocks(factors, jnp.asarray(rows)),
            jnp.asarray(n),
            jnp.asarray(k),
            jnp.asarray(m),
            batch_keys,
            greedy=greedy,
            materialize=plan.materialize,
            chunk=plan.chunk,
            sample_pad=plan.sample_pad,
        )
        pending.append((batch, out))
    return pending


def _collect(pending, groups, budgets, results: list[Greedy]) -> None:
    """Fetches the outputs into `results[b]`, with block positions mapped to rows."""
    for batch, out in pending:
        order, gains, weights = jax.device_get(out)
        for i, b in enumerate(batch):
            picks = order[i, : budgets[b]]
            results[b] = Greedy(
                order=groups[b][picks].astype(np.int32),
                gains=gains[i, : budgets[b]].astype(np.float32),
                weights=weights[i, : budgets[b]].astype(np.float32),
            )
