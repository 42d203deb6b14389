"""Magnitude pruning, layer-wise or global, exact under ties; random masks of equal sparsity.

`magnitude_masks(params, rate, mask=...)` prunes `rate` of the weights that `mask` still
keeps, by smallest |w|. The number pruned is defined once, here, so every caller and test
agrees on it:

    pruned = floor(rate · remaining + 0.5)      (round half up, in float64)

computed per prunable leaf (layer-wise) or once over all prunable leaves together (global).
Iterating from a dense leaf of n weights, the survivors follow s₀ = n,
s_{r+1} = s_r − floor(rate · s_r + 0.5); `survivor_counts` returns that sequence, so three
30% rounds leave s₃ ≈ n · 0.7³ (within a few weights) exactly as the recurrence says.

Exactly that many weights are pruned even when magnitudes tie — which is the normal case
after the first round, and common in any case with zero-initialized or quantized weights:
weights are ranked by (|w|, flat index) with a stable sort, so among equal magnitudes the
lower index goes first. Weights the mask already prunes rank below every survivor, so they
stay pruned and never count towards the new quota.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.prune.masks import Prunable, check_mask, full_mask, is_kernel
from jaxbd.types import PyTree

SCOPES = ("layerwise", "global")


def num_to_prune(remaining: int, rate: float) -> int:
    """Weights one pruning step removes from `remaining` survivors: round half up of
    rate · remaining."""
    return math.floor(rate * remaining + 0.5)


def survivor_counts(n: int, rate: float, rounds: int) -> list[int]:
    """Survivors of a leaf of n weights after 0, 1, ..., `rounds` pruning steps at `rate`."""
    counts = [n]
    for _ in range(rounds):
        counts.append(counts[-1] - num_to_prune(counts[-1], rate))
    return counts


def _keep_largest(scores: np.ndarray, keep: int) -> np.ndarray:
    """bool[n]: True at the `keep` entries of `scores` ranked highest by (score, index).

    A stable ascending sort ranks equal scores by index, so the result has exactly `keep`
    True entries whatever the ties. On the host with NumPy: it runs once per pruning round,
    and a jitted sort would compile once per kernel size for no gain.
    """
    order = np.argsort(scores, kind="stable")
    kept = np.zeros(scores.shape[0], bool)
    kept[order[scores.shape[0] - keep :]] = True
    return kept


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


def magnitude_masks(
    params: PyTree,
    rate: float,
    *,
    scope: Literal["layerwise", "global"] = "layerwise",
    mask: PyTree | None = None,
    prunable: Prunable = is_kernel,
) -> PyTree:
    """Prunes `rate` of the remaining prunable weights with the smallest magnitudes.

    A host function, not jittable: it reads the weights and the mask back to the host and
    ranks them there (exact counts, ties broken by index), so calling it under `jax.jit`
    fails with a concretization error. Masks are computed between training phases, outside
    the jitted step; the step then takes the mask as data (no recompilation).

    Args:
        params: the parameters whose magnitudes decide (e.g. after a round of training).
        rate: fraction in [0, 1] of the *remaining* prunable weights to prune.
        scope: "layerwise" prunes `rate` of each prunable leaf's survivors; "global" ranks
            all prunable weights together against one threshold and prunes `rate` of their
            total survivors.
        mask: the current bool mask (None: dense). Pruned weights stay pruned.
        prunable: which leaves may be pruned (default: conv and dense kernels); the others
            get all-True leaves.

    Returns:
        A new bool mask with the structure and shapes of `params`.

    Raises:
        ValueError: for a rate outside [0, 1], an unknown scope, or a mask that does not
            match the parameters.
    """
    _check_rate(rate)
    _check_scope(scope)
    mask = full_mask(params) if mask is None else mask
    check_mask(params, mask)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    masks = jax.tree.leaves(mask)
    chosen = [i for i, (path, p) in enumerate(leaves) if prunable(path, p)]

    host_masks = {i: np.asarray(jax.device_get(masks[i]), bool).reshape(-1) for i in chosen}

    def scores(i):
        # Already-pruned weights rank below every survivor (whose |w| ≥ 0).
        p = np.abs(np.asarray(jax.device_get(leaves[i][1]), np.float32)).reshape(-1)
        return np.where(host_masks[i], p, -np.inf)

    new = [jnp.asarray(m, bool) for m in masks]
    if scope == "layerwise":
        for i in chosen:
            remaining = int(np.count_nonzero(host_masks[i]))
            keep = remaining - num_to_prune(remaining, rate)
            new[i] = jnp.asarray(_keep_largest(scores(i), keep).reshape(np.shape(masks[i])))
    elif chosen:
        remaining = sum(int(np.count_nonzero(host_masks[i])) for i in chosen)
        keep = remaining - num_to_prune(remaining, rate)
        flat = _keep_largest(np.concatenate([scores(i) for i in chosen]), keep)
        offsets = np.cumsum([0] + [np.size(masks[i]) for i in chosen])
        for j, i in enumerate(chosen):
            new[i] = jnp.asarray(flat[offsets[j] : offsets[j + 1]].reshape(np.shape(masks[i])))
    return jax.tree.unflatten(treedef, new)


def random_masks(
    key: jax.Array,
    reference: PyTree,
    *,
    scope: Literal["layerwise", "global"] = "layerwise",
    prunable: Prunable = is_kernel,
) -> PyTree:
    """A uniformly random mask with the sparsity of `reference` (a lottery-ticket control).

    Args:
        key: PRNG key.
        reference: a bool mask whose survivor counts to match.
        scope: "layerwise" keeps exactly as many weights per prunable leaf as `reference`;
            "global" keeps the same total, spread uniformly over all prunable weights (the
            random counterpart of global magnitude pruning).
        prunable: which leaves may be pruned; the others are all-True.

    Returns:
        A bool mask with the structure of `reference`.
    """
    _check_scope(scope)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(reference)
    chosen = [i for i, (path, m) in enumerate(leaves) if prunable(path, m)]
    new = [jnp.ones(np.shape(m), bool) for _, m in leaves]
    counts = [int(np.count_nonzero(jax.device_get(leaves[i][1]))) for i in chosen]
    sizes = [int(np.size(leaves[i][1])) for i in chosen]
    if scope == "layerwise":
        for j, i in enumerate(chosen):
            noise = np.asarray(jax.random.uniform(jax.random.fold_in(key, j), (sizes[j],)))
            kept = _keep_largest(noise, counts[j])
            new[i] = jnp.asarray(kept.reshape(np.shape(leaves[i][1])))
    elif chosen:
        noise = np.asarray(jax.random.uniform(key, (sum(sizes),)))
        flat = _keep_largest(noise, sum(counts))
        offsets = np.cumsum([0, *sizes])
        for j, i in enumerate(chosen):
            new[i] = jnp.asarray(flat[offsets[j] : offsets[j + 1]].reshape(np.shape(leaves[i][1])))
    return jax.tree.unflatten(treedef, new)
