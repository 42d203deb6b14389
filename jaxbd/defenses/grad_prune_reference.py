"""Grad-Prune's `variant="reference"`: two quirks of the paper's released code.

(a) Besides the chosen filter's kernel slice, the code zeroes slice k of the parameter
tensor that follows the conv's weight in PyTorch's `parameters()` order; jaxbd's analogue is
the order in which flax creates the parameters (`parameter_order`, `next_tensor`,
`reference_mask`). (b) The gradient's first batch runs in training mode, updating the
BatchNorm statistics once per round, on a batch order reshuffled every round
(`round_order`). What each quirk hits on jaxbd's models is in docs/defenses.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.types import PyTree

Path = tuple[str, ...]

_ORDER_STREAM = 0x4751  # fold_in tag of the per-round batch order


def parameter_order(model: nn.Module, image_shape: Sequence[int]) -> tuple[Path, ...]:
    """The model's parameter leaves in the order flax creates them (forward call order).

    The analogue of PyTorch's `parameters()` order for the reference variant (see the
    module docstring). Traced abstractly (`jax.eval_shape`): nothing is computed.

    Args:
        model: a flax module called as `model(x, train=False)`.
        image_shape: (H, W, C) of one input image.

    Returns:
        Leaf paths, e.g. ("stage1_block1", "conv1", "kernel"), in creation order.
    """
    order: list[Path] = []

    def walk(tree, prefix):
        for name, value in tree.items():  # insertion order: the order flax created them
            if isinstance(value, Mapping):
                walk(value, (*prefix, name))
            else:
                order.append((*prefix, name))

    def trace():
        variables = model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)
        # Read the order here, inside the trace: the dict flax built keeps its creation
        # order, while the pytree eval_shape returns has its keys sorted.
        walk(variables["params"], ())
        return variables

    jax.eval_shape(trace)
    return tuple(order)


def next_tensor(order: Sequence[Path], conv: Path) -> Path | None:
    """The leaf after a conv's kernel in parameter order (the reference's zeroing target),
    or None when the kernel is the last leaf."""
    i = list(order).index((*conv, "kernel"))
    return tuple(order[i + 1]) if i + 1 < len(order) else None


def reference_mask(
    params: PyTree, pruned: Sequence[tuple[Path, int]], order: Sequence[Path]
) -> tuple[PyTree, list[dict[str, Any]]]:
    """The mask the reference code applies: each pruned filter's kernel slice, and slice k
    (last axis) of the tensor after the kernel in `order`.

    Args:
        params: the model's parameters (only their structure and shapes are read).
        pruned: (conv path, filter index) pairs, in pruning order.
        order: the parameter order (`parameter_order`).

    Returns:
        (a float32 0/1 pytree like `params`, per pruned filter {"tensor": the "/"-joined path
        of the other tensor hit, or None, "in_range": whether k fell inside it}).
    """
    flat = {
        tuple(_key_name(k) for k in path): np.ones(np.shape(leaf), np.float32)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    hits = []
    for conv, k in pruned:
        conv, k = tuple(conv), int(k)
        flat[(*conv, "kernel")][..., k] = 0.0
        target = next_tensor(order, conv)
        in_range = target is not None and k < flat[target].shape[-1]
        if in_range:
            flat[target][..., k] = 0.0  # PyTorch's data[k] of an [out, ...] tensor
        hits.append({"tensor": None if target is None else "/".join(target), "in_range": in_range})
    mask = jax.tree_util.tree_map_with_path(
        lambda path, _: flat[tuple(_key_name(k) for k in path)], params
    )
    return mask, hits


def round_order(key: jax.Array, round_index: int, n: int) -> np.ndarray:
    """int[n] the example order of one round's gradient pass: the reference's loader
    reshuffles every round, and its first batch (in training mode) is a random one."""
    return np.asarray(
        jax.random.permutation(
            jax.random.fold_in(jax.random.fold_in(key, _ORDER_STREAM), round_index), n
        )
    )


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)
