"""Pruning masks as pytrees: which weights are prunable, applying a mask, sparsity summaries.

A mask has exactly the structure and leaf shapes of the parameters it prunes, with boolean
leaves: True keeps a weight, False prunes it. Leaves that are never pruned (biases,
BatchNorm scale and bias) are all-True, so a mask can be applied to the whole parameter tree
with one `jax.tree.map` and no bookkeeping of which leaves it concerns (docs/methods.md,
"Masks").

Which leaves are prunable is decided by a predicate over (path, leaf); the default prunes
every convolution and dense kernel (a leaf named "kernel" with at least two dimensions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.types import PyTree

Prunable = Callable[[tuple, Any], bool]
"""`prunable(path, leaf) -> bool`: whether a parameter leaf may be pruned."""


def is_kernel(path: tuple, leaf: Any) -> bool:
    """The default prunable predicate: conv and dense kernels (leaves named "kernel", ≥ 2-D).

    Args:
        path: the leaf's key path (`jax.tree_util` keys).
        leaf: the parameter array.
    """
    return bool(path) and _key_name(path[-1]) == "kernel" and np.ndim(leaf) >= 2


def path_name(path: tuple) -> str:
    """A readable "/"-joined name for a key path, e.g. "stage1_block0/conv1/kernel"."""
    return "/".join(_key_name(k) for k in path)


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def prunable_leaves(params: PyTree, prunable: Prunable = is_kernel) -> PyTree:
    """A pytree like `params` with a Python bool per leaf: True where the leaf is prunable."""
    return jax.tree_util.tree_map_with_path(prunable, params)


def full_mask(params: PyTree) -> PyTree:
    """The dense mask: all-True bool leaves with the shapes of `params`."""
    return jax.tree.map(lambda p: jnp.ones(np.shape(p), bool), params)


def apply_mask(params: PyTree, mask: PyTree) -> PyTree:
    """Zeroes the pruned weights: `params * mask`, leaf by leaf, keeping each leaf's dtype.

    Args:
        params: the parameters.
        mask: bool (or 0/1 float) pytree with the structure and shapes of `params`.

    Raises:
        ValueError: if the structures or a leaf's shape differ.
    """
    check_mask(params, mask)
    return jax.tree.map(lambda p, m: p * jnp.asarray(m, p.dtype), params, mask)


def check_mask(params: PyTree, mask: PyTree) -> None:
    """Raises ValueError unless `mask` has the structure and leaf shapes of `params`."""
    p_def, m_def = jax.tree.structure(params), jax.tree.structure(mask)
    if p_def != m_def:
        raise ValueError(f"mask structure {m_def} differs from the parameters' {p_def}")
    for (path, p), m in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(mask), strict=True
    ):
        if np.shape(p) != np.shape(m):
            raise ValueError(
                f"mask leaf {path_name(path)} has shape {np.shape(m)}, the parameter has "
                f"{np.shape(p)}"
            )


def sparsity(mask: PyTree, prunable: Prunable = is_kernel) -> dict[str, Any]:
    """How much of the prunable weights a mask removes, in total and per prunable leaf.

    Args:
        mask: bool (or 0/1 float) mask pytree.
        prunable: which leaves count (the same predicate the mask was built with).

    Returns:
        {"total": pruned fraction of all prunable weights, "pruned": int, "prunable": int,
        "layers": {leaf name: pruned fraction}}. Leaves outside `prunable` are not counted.
    """
    layers, pruned, total = {}, 0, 0
    for path, m in jax.tree_util.tree_flatten_with_path(mask)[0]:
        if not prunable(path, m):
            continue
        m = np.asarray(jax.device_get(m))
        n, kept = m.size, int(np.count_nonzero(m))
        layers[path_name(path)] = (n - kept) / n
        pruned += n - kept
        total += n
    return {
        "total": pruned / total if total else 0.0,
        "pruned": pruned,
        "prunable": total,
        "layers": layers,
    }


def survivors(mask: PyTree, prunable: Prunable = is_kernel) -> dict[str, int]:
    """Kept weights per prunable leaf, by leaf name."""
    return {
        path_name(path): int(np.count_nonzero(jax.device_get(m)))
        for path, m in jax.tree_util.tree_flatten_with_path(mask)[0]
        if prunable(path, m)
    }
