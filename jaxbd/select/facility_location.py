"""Greedy facility-location maximization on the accelerator (the core of CRAIG, SPEC §2.4).

For a block of n examples with gradient proxies g_i, the similarity of example i to a
candidate medoid j is s_ij = d_max − d_ij with d_ij = ‖g_i − g_j‖ (Euclidean) and d_max the
largest distance in the block, so that s_ij ≥ 0. The facility-location function

    F(S) = Σ_i max_{j∈S} s_ij        (F(∅) = 0)

is monotone submodular; greedy maximization picks, k times, the candidate with the largest
marginal gain Σ_i max(0, s_ij − cur_i), where cur_i = max_{j∈S} s_ij is the coverage so far.
Three greedy variants:

- "exact": evaluates every candidate's gain at every step; ties go to the lowest index.
- "lazy" (Minoux 1978): keeps each candidate's last gain as an upper bound (gains only shrink
  as S grows) and re-evaluates only the candidates whose bound could still win, in batches of
  `lazy_batch` on the device. A pick is made only once its gain is fresh and no bound beats
  it under the same (gain, lowest index) order, so the picks are *identical* to exact greedy.
  This holds in floating point too: gains are summed in a fixed pairwise order, so a
  candidate's gain is the same bits wherever and in whatever batch it is evaluated.
- "stochastic" (Mirzasoleiman et al. 2015, "Lazier than lazy greedy"): each step evaluates a
  uniform sample of ⌈(n/k)·ln(1/ε)⌉ unselected candidates and takes the best of those (ties:
  lowest index); (1 − 1/e − ε)-optimal in expectation.

Each pick j gets the weight γ_j = |{i : j = argmax_{s∈S} s_is}|, the size of its cluster. Ties
in that argmax go to the *earliest-selected* medoid (a later pick only takes over an example
whose similarity it strictly improves), so the weights of a block sum to n. A pick that
improves nobody — possible only once every gain is 0, e.g. a duplicate of an earlier pick —
gets weight 0.

Gradient proxies are either a float array [n, d] or an `OuterProduct` of two factors (CRAIG's
last-layer weight gradient (p − onehot) ⊗ h), whose distances use the kernel identity
‖a⊗h − b⊗h'‖² = ‖a‖²‖h‖² + ‖b‖²‖h'‖² − 2(a·b)(h·h') and never materialize the product.

Everything heavy runs in one jitted call per batch of blocks: the similarity rows, the whole
budget loop (a `lax` loop with a traced trip count) and the cluster sizes. When a block's
n×n similarity matrix fits `max_matrix_bytes` it is materialized on the device, and on
accelerators several blocks (e.g. all classes of CIFAR-10) are processed at once under `vmap`
(on the CPU one per call: see `blocks_per_call`); otherwise rows of
the matrix are recomputed from the proxies whenever they are needed (streaming), so memory is
O(n · lazy_batch). Blocks are padded to a multiple of a power-of-two block size (padding rows
are masked), so classes of similar size share one compilation. The host never holds an n×n
matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbd.select.base import Selection, make_selection

GREEDY_VARIANTS = ("exact", "lazy", "stochastic")
DEFAULT_BLOCK_SIZE = 256
DEFAULT_LAZY_BATCH = 32
CPU_LAZY_BATCH = 8
"""Lazy greedy's re-evaluation batch when `lazy_batch=None`: wide batches keep an accelerator
busy; on the CPU a pick usually needs only a few fresh gains, and 8 measured fastest
(BENCHMARKS.md)."""
DEFAULT_MAX_MATRIX_BYTES = 1 << 30

_HIGHEST = lax.Precision.HIGHEST  # TF32 matmuls on GPUs would perturb distances at ~1e-3.


class OuterProduct(NamedTuple):
    """Rows g_i = left_i ⊗ right_i, kept as their two factors (never materialized).

    Attributes:
        left: float[n, p], e.g. the softmax errors p_i − onehot(y_i).
        right: float[n, q], e.g. the penultimate features h_i.
    """

    left: jax.Array
    right: jax.Array


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


# ---------------------------------------------------------------------------------------------
# Host-side validation and padding.


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _as_factors(features) -> tuple[jax.Array, ...]:
    """Validated float32 factors: (x,) for a dense proxy, (left, right) for an outer product."""
    if isinstance(features, OuterProduct):
        named = (("features.left", features.left), ("features.right", features.right))
    else:
        named = (("features", features),)
    factors = []
    for name, f in named:
        f = jnp.asarray(f)
        if f.ndim != 2:
            raise ValueError(f"{name} must have rank 2 [n, d], got shape {f.shape}")
        if not (jnp.issubdtype(f.dtype, jnp.floating) or jnp.issubdtype(f.dtype, jnp.integer)):
            raise ValueError(f"{name} must be real numbers, got dtype {f.dtype}")
        if f.shape[1] == 0:
            raise ValueError(f"{name} has no feature dimensions (shape {f.shape})")
        factors.append(f.astype(jnp.float32))
    if len(factors) == 2 and factors[0].shape[0] != factors[1].shape[0]:
        raise ValueError(
            f"outer-product factors disagree on n: {factors[0].shape[0]} vs {factors[1].shape[0]}"
        )
    if not all(bool(jnp.isfinite(f).all()) for f in factors):
        raise ValueError("features contain NaN or infinite values")
    return tuple(factors)


def _check_pow2(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive power of two, got {value!r}")
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two, got {value}")
    return int(value)


def _padded_size(n: int, block_size: int) -> tuple[int, int]:
    """(n_pad, block): n rounded up to a multiple of block = min(block_size, next pow2 ≥ n)."""
    block = min(block_size, _next_pow2(n))
    return -(-n // block) * block, block


def _num_rows(factors) -> int:
    return int(factors[0].shape[0])


# ---------------------------------------------------------------------------------------------
# Device-side building blocks (all shapes static; n is traced).


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
def _take_rows(matrix, idx):
    """matrix[idx] for a [n, ...] matrix and int32[L] row indices -> [L, ...]."""
    return jnp.take(matrix, idx, axis=0, mode="clip")


@_take_rows.def_vmap
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
        jnp.dot(f if rows is None else _take_rows(f, rows), f.T, precision=_HIGHEST)
        for f in factors
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


def _gains(rows, cur):
    """Marginal gains Σ_i max(0, s_ji − cur_i) of candidate rows s_j· [L, n_pad] -> [L].

    A candidate's gain is the same number whichever variant computes it, in whatever batch
    (see `_pairwise_sum`); lazy greedy's equality with exact greedy, ties included, rests on
    this, and on the gains being monotone in `cur` (IEEE subtraction, max and addition are).
    """
    return _pairwise_sum(jnp.maximum(rows - cur[None, :], 0.0))


class _Similarity(NamedTuple):
    """Row access to the n_pad×n_pad similarity S[j, i] = s_ij of one block (candidate j)."""

    rows: Callable  # int32[L] -> float32[L, n_pad]
    all_gains: Callable  # float32[n_pad] cur -> float32[n_pad] gains of every candidate
    valid: jax.Array  # bool[n_pad]


def _similarity(factors, n, *, materialize: bool, chunk: int) -> _Similarity:
    factors, sqnorms, valid = _prepare(factors, n)
    n_pad = valid.shape[0]
    if materialize:
        d = _distances(factors, sqnorms, None)
        pair_valid = valid[:, None] & valid[None, :]
        d_max = jnp.max(jnp.where(pair_valid, d, 0.0))
        s = jnp.where(pair_valid, d_max - d, 0.0)
        return _Similarity(
            rows=lambda idx: _take_rows(s, idx),
            all_gains=lambda cur: _gains(s, cur),
            valid=valid,
        )

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
        return lax.map(lambda idx: _gains(rows(idx), cur), chunks).reshape(-1)

    return _Similarity(rows=rows, all_gains=all_gains, valid=valid)


class _State(NamedTuple):
    cur: jax.Array  # float32[n_pad] coverage max_{j∈S} s_ij (0 for S = ∅)
    assign: jax.Array  # int32[n_pad] pick step of each example's medoid (-1: none yet)
    selected: jax.Array  # bool[n_pad]
    order: jax.Array  # int32[n_pad] picks in order (-1 past the budget)
    gains: jax.Array  # float32[n_pad] gain of each pick
    bound: jax.Array  # float32[n_pad] lazy greedy's upper bounds on the gains
    fresh: jax.Array  # bool[n_pad] lazy greedy: bound evaluated at the current step


def _first_argmax(values, idx):
    """The entry of `idx` with the largest value, ties to the lowest index (any shapes [L]).

    Two plain reductions (max, then min over the positions that attain it) rather than
    `jnp.argmax`, whose (value, index) reduction XLA:CPU runs about twice as slowly; the
    greedy loops take several per pick.
    """
    best = jnp.max(values)
    return jnp.min(jnp.where(values == best, idx, jnp.iinfo(jnp.int32).max)), best


def _argmax(values):
    """int32 position of the first maximum of a 1-d array (`jnp.argmax`'s result)."""
    return _first_argmax(values, jnp.arange(values.shape[0], dtype=jnp.int32))[0]


def _greedy_block(factors, n, k, m, key, *, greedy, materialize, chunk, sample_pad):
    """One block's greedy run; see `facility_location_groups` for the arguments.

    Returns:
        (order int32[n_pad], gains float32[n_pad], weights float32[n_pad]) indexed by pick step;
        entries past the budget k are -1, 0 and 0.
    """
    sim = _similarity(factors, n, materialize=materialize, chunk=chunk)
    valid = sim.valid
    n_pad = valid.shape[0]
    neg_inf = jnp.float32(-jnp.inf)

    def pick(state, t, j, gain):
        row = sim.rows(j[None])[0]
        # Strict improvement only: ties stay with the earliest pick. The first pick takes
        # everyone, including examples at distance d_max from it (s = 0 = initial coverage).
        take = (row > state.cur) | (t == 0)
        return state._replace(
            cur=jnp.maximum(state.cur, row),
            assign=jnp.where(take, t, state.assign),
            selected=state.selected.at[j].set(True),
            order=state.order.at[t].set(j),
            gains=state.gains.at[t].set(gain),
        )

    def available(state):
        return valid & ~state.selected

    def exact_step(t, state):
        g = jnp.where(available(state), sim.all_gains(state.cur), neg_inf)
        j = _argmax(g)  # first maximum: ties to the lowest index
        return pick(state, t, j, g[j])

    def lazy_step(t, state):
        avail = available(state)
        # Under vmap this step also runs (discarded) for blocks that are done; they must not
        # keep the re-evaluation loop going, nor spin in it once no candidate is left.
        active = (t < k) & jnp.any(avail)

        def leader(bound):
            return _argmax(jnp.where(avail, bound, neg_inf))

        def stale_leader(carry):
            _, fresh, j = carry
            return active & ~fresh[j]

        def refresh(carry):
            # Re-evaluate a batch of stale candidates that includes the leader. Bounds only
            # shrink, so once the leader's bound is fresh no stale candidate can beat it, ties
            # included: argmax prefers the lower index on equal bounds, as exact greedy does.
            bound, fresh, j = carry
            stale = avail & ~fresh
            if materialize:
                # The stale candidates with the largest bounds; their rows are read from S.
                _, idx = lax.top_k(jnp.where(stale, bound, neg_inf), chunk)
            else:
                # The leader's aligned chunk: the very computation exact greedy's sweep does
                # for these candidates, so even the recomputed distances agree to the bit.
                idx = (j // chunk) * chunk + jnp.arange(chunk, dtype=jnp.int32)
            update = stale[idx]
            g = _gains(sim.rows(idx), state.cur)
            bound = bound.at[idx].set(jnp.where(update, g, bound[idx]))
            fresh = fresh.at[idx].set(fresh[idx] | update)
            return bound, fresh, leader(bound)

        carry = (state.bound, state.fresh, leader(state.bound))
        bound, fresh, j = lax.while_loop(stale_leader, refresh, carry)
        state = pick(state._replace(bound=bound), t, j, bound[j])
        return state._replace(fresh=jnp.zeros_like(fresh))

    def stochastic_step(t, state):
        # A uniform sample of m unselected candidates: the m smallest of i.i.d. uniforms.
        u = jax.random.uniform(jax.random.fold_in(key, t), (n_pad,))
        u = jnp.where(available(state), u, 2.0)
        neg_u, idx = lax.top_k(-u, sample_pad)
        in_sample = (jnp.arange(sample_pad) < m) & (neg_u > -2.0)
        g = jnp.where(in_sample, _gains(sim.rows(idx), state.cur), neg_inf)
        j, gain = _first_argmax(g, idx)
        return pick(state, t, j, gain)

    zeros = jnp.zeros(n_pad, jnp.float32)
    state = _State(
        cur=zeros,
        assign=jnp.full(n_pad, -1, jnp.int32),
        selected=jnp.zeros(n_pad, bool),
        order=jnp.full(n_pad, -1, jnp.int32),
        gains=zeros,
        bound=zeros,
        fresh=jnp.zeros(n_pad, bool),
    )
    if greedy == "lazy":
        # The first step's bounds are the exact gains, all fresh.
        state = state._replace(bound=sim.all_gains(zeros), fresh=jnp.ones(n_pad, bool))
    step = {"exact": exact_step, "lazy": lazy_step, "stochastic": stochastic_step}[greedy]
    state = lax.fori_loop(0, k, step, state)
    counted = jnp.where(valid & (state.assign >= 0), state.assign, n_pad)
    weights = zeros.at[counted].add(1.0, mode="drop")
    return state.order, state.gains, weights


@partial(jax.jit, static_argnames=("greedy", "materialize", "chunk", "sample_pad"))
def _greedy_groups(factors, n, k, m, keys, *, greedy, materialize, chunk, sample_pad):
    """Greedy on a batch of g blocks at once.

    Args:
        factors: tuple of float32[g, n_pad, d_f], each block's proxies (padding rows are
            masked by `n`).
        n: int32[g] block sizes.
        k: int32[g] budgets.
        m: int32[g] stochastic sample sizes (ignored otherwise).
        keys: [g] PRNG keys for stochastic greedy, else None.

    Returns:
        order int32[g, n_pad] (block positions), gains float32[g, n_pad], weights float32[g, n_pad].
    """
    run = partial(
        _greedy_block,
        greedy=greedy,
        materialize=materialize,
        chunk=chunk,
        sample_pad=sample_pad,
    )
    return jax.vmap(run)(factors, n, k, m, keys)


@jax.jit
def _gather_blocks(factors, rows):
    """Each block's proxy rows: float32[N, d_f] and int32[g, n_pad] -> float32[g, n_pad, d_f]."""
    return tuple(f[rows] for f in factors)


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
        greedy: "exact", "lazy" or "stochastic".
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
    factors = _as_factors(features)
    num_rows = _num_rows(factors)
    if greedy not in GREEDY_VARIANTS:
        raise ValueError(f"greedy must be one of {GREEDY_VARIANTS}, got {greedy!r}")
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, int | float | np.floating)
        or not 0.0 < epsilon < 1.0
    ):
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon!r}")
    block_size = _check_pow2("block_size", block_size)
    on_cpu = jax.default_backend() == "cpu"
    if lazy_batch is None:
        lazy_batch = CPU_LAZY_BATCH if on_cpu else DEFAULT_LAZY_BATCH
    lazy_batch = _check_pow2("lazy_batch", lazy_batch)
    if blocks_per_call is None:
        blocks_per_call = 1 if on_cpu else len(groups)
    elif (
        isinstance(blocks_per_call, bool)
        or not isinstance(blocks_per_call, int | np.integer)
        or blocks_per_call < 1
    ):
        raise ValueError(f"blocks_per_call must be None or an int >= 1, got {blocks_per_call!r}")
    if isinstance(max_matrix_bytes, bool) or not isinstance(max_matrix_bytes, int | np.integer):
        raise ValueError(f"max_matrix_bytes must be an int, got {max_matrix_bytes!r}")
    groups = [np.asarray(g).reshape(-1) for g in groups]
    budgets = list(budgets)
    if len(budgets) != len(groups):
        raise ValueError(f"{len(budgets)} budgets for {len(groups)} groups")
    for b, (g, budget) in enumerate(zip(groups, budgets, strict=True)):
        if g.size and not np.issubdtype(g.dtype, np.integer):
            raise ValueError(f"group {b}: row indices must be integers, got {g.dtype}")
        if g.size and (g.min() < 0 or g.max() >= num_rows):
            raise ValueError(f"group {b}: row indices must be in [0, {num_rows})")
        if np.unique(g).size != g.size:
            raise ValueError(f"group {b}: row indices must be distinct")
        if (
            isinstance(budget, bool)
            or not isinstance(budget, int | np.integer)
            or not 0 <= budget <= g.size
        ):
            raise ValueError(f"group {b}: budget must be an int in [0, {g.size}], got {budget!r}")
    if greedy == "stochastic":
        if keys is None:
            raise ValueError(
                "stochastic greedy needs a PRNG key, e.g. key=jax.random.key(0); got None"
            )
        if len(keys) != len(groups):
            raise ValueError(f"{len(keys)} keys for {len(groups)} groups")

    active = [b for b, budget in enumerate(budgets) if budget > 0]
    empty = Greedy(np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.float32))
    results: list[Greedy] = [empty] * len(groups)
    if not active:
        return results

    n_pad, block = _padded_size(max(groups[b].size for b in active), block_size)
    chunk = min(lazy_batch, block)  # divides n_pad: both are powers of two
    matrix_bytes = n_pad * n_pad * 4
    materialize = matrix_bytes <= max_matrix_bytes
    fit = max(1, max_matrix_bytes // matrix_bytes)
    per_call = min(len(active), fit, blocks_per_call) if materialize else 1
    sizes = {b: groups[b].size for b in active}
    # Stochastic greedy's sample size s = ⌈(n/k)·ln(1/ε)⌉ (at most n), padded to a power of two.
    samples = {
        b: min(sizes[b], math.ceil(sizes[b] / budgets[b] * math.log(1 / epsilon))) for b in active
    }
    # (Only stochastic greedy's programs depend on it: the others compile once per shape.)
    sample_pad = min(n_pad, _next_pow2(max(samples.values()))) if greedy == "stochastic" else 1

    pending = []
    for start in range(0, len(active), per_call):
        batch = active[start : start + per_call]
        # Pad the last batch with empty blocks (n = 0, k = 0) so every call has one shape.
        padded = batch + [None] * (per_call - len(batch))
        rows = np.zeros((per_call, n_pad), np.int32)
        n, k, m = (np.zeros(per_call, np.int32) for _ in range(3))
        for i, b in enumerate(padded):
            if b is None:
                continue
            rows[i, : sizes[b]] = groups[b]
            n[i], k[i], m[i] = sizes[b], budgets[b], samples[b]
        batch_keys = None
        if greedy == "stochastic":
            batch_keys = jnp.stack([keys[b if b is not None else batch[0]] for b in padded])
        # Gathered outside the greedy's jit, whose compilations then depend on the block
        # shapes only, not on N.
        out = _greedy_groups(
            _gather_blocks(factors, jnp.asarray(rows)),
            jnp.asarray(n),
            jnp.asarray(k),
            jnp.asarray(m),
            batch_keys,
            greedy=greedy,
            materialize=materialize,
            chunk=chunk,
            sample_pad=sample_pad,
        )
        pending.append((batch, out))
    for batch, out in pending:
        order, gains, weights = jax.device_get(out)
        for i, b in enumerate(batch):
            picks = order[i, : budgets[b]]
            results[b] = Greedy(
                order=groups[b][picks].astype(np.int32),
                gains=gains[i, : budgets[b]].astype(np.float32),
                weights=weights[i, : budgets[b]].astype(np.float32),
            )
    return results


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
    factors = _as_factors(features)
    n = _num_rows(factors)
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or not 1 <= budget <= n:
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


@jax.jit
def _similarity_matrix(factors, n):
    sim = _similarity(factors, n, materialize=True, chunk=1)
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
    factors = _as_factors(features)
    n = _num_rows(factors)
    n_pad, _ = _padded_size(n, _check_pow2("block_size", block_size))
    padded = tuple(jnp.pad(f, ((0, n_pad - n), (0, 0))) for f in factors)
    return _similarity_matrix(padded, jnp.int32(n))[:n, :n]


@partial(jax.jit, static_argnames=("chunk",))
def _coverage(factors, n, picks, num_picks, *, chunk):
    sim = _similarity(factors, n, materialize=False, chunk=chunk)

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
    chunk: int = DEFAULT_LAZY_BATCH,
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
    factors = _as_factors(features)
    n = _num_rows(factors)
    indices = np.asarray(indices).reshape(-1)
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be integers, got {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(f"indices must be in [0, {n}), got [{indices.min()}, {indices.max()}]")
    if indices.size == 0:
        return 0.0
    n_pad, block = _padded_size(n, _check_pow2("block_size", block_size))
    chunk = min(_check_pow2("chunk", chunk), block)  # divides n_pad
    padded = tuple(jnp.pad(f, ((0, n_pad - n), (0, 0))) for f in factors)
    k_pad = -(-indices.size // chunk) * chunk
    picks = np.zeros(k_pad, np.int32)
    picks[: indices.size] = indices
    cur = _coverage(padded, jnp.int32(n), jnp.asarray(picks), jnp.int32(indices.size), chunk=chunk)
    return float(np.sum(np.asarray(cur, np.float64)))
