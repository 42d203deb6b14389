"""The greedy loops of facility-location maximization, on the device.

F(S) = Σ_i max_{j∈S} s_ij (F(∅) = 0) is monotone submodular; greedy maximization picks, k
times, the candidate with the largest marginal gain. Three variants (`GREEDY`): "exact"
(every candidate's gain at every step; ties to the lowest index), "lazy" (Minoux 1978: the
same picks as exact, bit for bit, re-evaluating only candidates whose bound could win) and
"stochastic" (Mirzasoleiman et al. 2015, "Lazier than lazy greedy": the best of a uniform
sample each step). Each pick gets the size of its cluster as weight (ties to the
earliest-selected medoid), so a block's weights sum to n.

The whole budget loop is one `lax.fori_loop` with a traced trip count; `greedy_groups` runs it
on a batch of padded blocks under `vmap`, in one jitted call. In detail: docs/selection.md.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbd.select.similarity import Similarity, gains, similarity

GREEDY = ("exact", "lazy", "stochastic")
"""The greedy variants, the values of `greedy=` (and of `config.select.craig.greedy`)."""

_NEG_INF = np.float32(-np.inf)


class _State(NamedTuple):
    cur: jax.Array  # float32[n_pad] coverage max_{j∈S} s_ij (0 for S = ∅)
    assign: jax.Array  # int32[n_pad] pick step of each example's medoid (-1: none yet)
    selected: jax.Array  # bool[n_pad]
    order: jax.Array  # int32[n_pad] picks in order (-1 past the budget)
    gains: jax.Array  # float32[n_pad] gain of each pick
    bound: jax.Array  # float32[n_pad] lazy greedy's upper bounds on the gains
    fresh: jax.Array  # bool[n_pad] lazy greedy: bound evaluated at the current step


def _initial_state(n_pad: int) -> _State:
    zeros = jnp.zeros(n_pad, jnp.float32)
    return _State(
        cur=zeros,
        assign=jnp.full(n_pad, -1, jnp.int32),
        selected=jnp.zeros(n_pad, bool),
        order=jnp.full(n_pad, -1, jnp.int32),
        gains=zeros,
        bound=zeros,
        fresh=jnp.zeros(n_pad, bool),
    )


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


def _available(sim: Similarity, state: _State):
    return sim.valid & ~state.selected


def _pick(sim: Similarity, state: _State, t, j, gain) -> _State:
    """Adds candidate j as pick t: coverage, cluster assignment, order and gain."""
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


def _exact_step(sim: Similarity):
    def step(t, state):
        g = jnp.where(_available(sim, state), sim.all_gains(state.cur), _NEG_INF)
        j = _argmax(g)  # first maximum: ties to the lowest index
        return _pick(sim, state, t, j, g[j])

    return step


def _lazy_step(sim: Similarity, k, *, materialize: bool, chunk: int):
    def step(t, state):
        avail = _available(sim, state)
        # Under vmap this step also runs (discarded) for blocks that are done; they must not
        # keep the re-evaluation loop going, nor spin in it once no candidate is left.
        active = (t < k) & jnp.any(avail)

        def leader(bound):
            return _argmax(jnp.where(avail, bound, _NEG_INF))

        def stale_leader(carry):
            _, fresh, j = carry
            return active & ~fresh[j]

        def refresh(carry):
            bound, fresh, j = carry
            return _refresh(sim, state.cur, avail, bound, fresh, j, materialize, chunk, leader)

        carry = (state.bound, state.fresh, leader(state.bound))
        bound, fresh, j = lax.while_loop(stale_leader, refresh, carry)
        state = _pick(sim, state._replace(bound=bound), t, j, bound[j])
        return state._replace(fresh=jnp.zeros_like(fresh))

    return step


def _refresh(sim, cur, avail, bound, fresh, j, materialize, chunk, leader):
    """Re-evaluates a batch of stale candidates that includes the leader j.

    Bounds only shrink, so once the leader's bound is fresh no stale candidate can beat it,
    ties included: argmax prefers the lower index on equal bounds, as exact greedy does.
    """
    stale = avail & ~fresh
    if materialize:
        # The stale candidates with the largest bounds; their rows are read from S.
        _, idx = lax.top_k(jnp.where(stale, bound, _NEG_INF), chunk)
    else:
        # The leader's aligned chunk: the very computation exact greedy's sweep does for
        # these candidates, so even the recomputed distances agree to the bit.
        idx = (j // chunk) * chunk + jnp.arange(chunk, dtype=jnp.int32)
    update = stale[idx]
    g = gains(sim.rows(idx), cur)
    bound = bound.at[idx].set(jnp.where(update, g, bound[idx]))
    fresh = fresh.at[idx].set(fresh[idx] | update)
    return bound, fresh, leader(bound)


def _stochastic_step(sim: Similarity, key, m, *, sample_pad: int):
    n_pad = sim.valid.shape[0]

    def step(t, state):
        # A uniform sample of m unselected candidates: the m smallest of i.i.d. uniforms.
        u = jax.random.uniform(jax.random.fold_in(key, t), (n_pad,))
        u = jnp.where(_available(sim, state), u, 2.0)
        neg_u, idx = lax.top_k(-u, sample_pad)
        in_sample = (jnp.arange(sample_pad) < m) & (neg_u > -2.0)
        g = jnp.where(in_sample, gains(sim.rows(idx), state.cur), _NEG_INF)
        j, gain = _first_argmax(g, idx)
        return _pick(sim, state, t, j, gain)

    return step


def _greedy_block(factors, n, k, m, key, *, greedy, materialize, chunk, sample_pad):
    """One block's greedy run; see `greedy_groups` for the arguments.

    Returns:
        (order int32[n_pad], gains float32[n_pad], weights float32[n_pad]) indexed by pick step;
        entries past the budget k are -1, 0 and 0.
    """
    sim = similarity(factors, n, materialize=materialize, chunk=chunk)
    n_pad = sim.valid.shape[0]
    state = _initial_state(n_pad)
    if greedy == "exact":
        step = _exact_step(sim)
    elif greedy == "lazy":
        step = _lazy_step(sim, k, materialize=materialize, chunk=chunk)
        # The first step's bounds are the exact gains, all fresh.
        state = state._replace(bound=sim.all_gains(state.cur), fresh=jnp.ones(n_pad, bool))
    else:
        step = _stochastic_step(sim, key, m, sample_pad=sample_pad)
    state = lax.fori_loop(0, k, step, state)
    return state.order, state.gains, _cluster_sizes(sim.valid, state.assign)


def _cluster_sizes(valid, assign):
    """float32[n_pad] γ per pick step: how many valid examples each pick covers best."""
    n_pad = valid.shape[0]
    counted = jnp.where(valid & (assign >= 0), assign, n_pad)
    return jnp.zeros(n_pad, jnp.float32).at[counted].add(1.0, mode="drop")


@partial(jax.jit, static_argnames=("greedy", "materialize", "chunk", "sample_pad"))
def greedy_groups(factors, n, k, m, keys, *, greedy, materialize, chunk, sample_pad):
    """Greedy on a batch of g padded blocks at once.

    Args:
        factors: tuple of float32[g, n_pad, d_f], each block's proxies (padding rows are
            masked by `n`).
        n: int32[g] block sizes.
        k: int32[g] budgets.
        m: int32[g] stochastic sample sizes (ignored otherwise).
        keys: [g] PRNG keys for stochastic greedy, else None.
        greedy: one of `GREEDY`.
        materialize: whether each block's similarity matrix is built on the device.
        chunk: lazy greedy's re-evaluation batch and the streamed path's row chunk (a power
            of two dividing n_pad).
        sample_pad: stochastic greedy's sample size, padded (static).

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
