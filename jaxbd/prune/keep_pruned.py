"""`keep_pruned`: an optax transform that keeps pruned weights at exactly zero.

For a user's own optimizer, chained last:

    tx = optax.chain(
        optax.add_decayed_weights(5e-4),
        optax.sgd(0.1, momentum=0.9),
        prune.keep_pruned(mask),
    )
    opt_state = tx.init(params)
    updates, opt_state = tx.update(grads, opt_state, params)  # params are required
    params = optax.apply_updates(params, updates)              # pruned weights are 0.0

At a pruned coordinate the update is −params, so `params + update` is exactly 0; elsewhere
the update passes through unchanged. The mask lives in the transform's *state*, not in its
closure: a new mask is new data for a jitted step that takes `opt_state` as an argument,
never a new trace. Build the new state with `keep_pruned(new_mask).init(params)` (the
update functions do not depend on the mask, so the step compiled for the first transform
serves any), or swap the mask into an existing
state with `replace_mask`, keeping the momentum.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxbd.prune.masks import check_mask
from jaxbd.types import PyTree


class KeepPrunedState(NamedTuple):
    """The state of `keep_pruned`: the boolean mask pytree (True = weight kept)."""

    mask: PyTree


def keep_pruned(mask: PyTree) -> optax.GradientTransformation:
    """An optax transform that makes `params + update` exactly 0 where `mask` is False.

    Chain it last, after everything that produces the final update (learning rate, momentum,
    weight decay), so nothing can move a pruned weight after it. A weight already at 0 stays
    0, a nonzero one is zeroed on the first step. Momentum and weight decay upstream may still
    accumulate at pruned coordinates, which does not matter: their contribution is replaced,
    not added to.

    Args:
        mask: bool pytree with the structure and leaf shapes of the parameters (True = kept;
            all-True for leaves never pruned, as `jaxbd.prune.magnitude_masks` returns).

    Returns:
        An `optax.GradientTransformation`: `init(params)` checks the mask against `params`
        and returns a `KeepPrunedState` holding it as bool arrays; `update(updates, state,
        params)` returns `where(mask, updates, −params)` leaf by leaf (each in the dtype of
        `updates`) and the state unchanged. `params` is required.

    Raises:
        ValueError: at `init`, for a mask whose structure or leaf shapes differ from the
            parameters'; at `update`, when `params` is not given.
    """

    def init_fn(params):
        check_mask(params, mask)
        return KeepPrunedState(mask=jax.tree.map(lambda m: jnp.asarray(m, bool), mask))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "keep_pruned needs the parameters: call tx.update(updates, opt_state, params)"
            )
        new_updates = jax.tree.map(
            lambda u, m, p: jnp.where(m, u, -jnp.asarray(p, u.dtype)),
            updates,
            state.mask,
            params,
        )
        return new_updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def replace_mask(opt_state: PyTree, mask: PyTree) -> PyTree:
    """`opt_state` with the mask of every `KeepPrunedState` in it replaced by `mask`.

    The rest of the state (momentum, step counts) is kept, e.g. to prune further between IMP
    rounds without re-initializing the optimizer. The result has the same structure, shapes
    and dtypes, so a jitted step does not retrace.

    Args:
        opt_state: the state of an optax chain containing `keep_pruned`.
        mask: the new bool mask pytree, with the structure of the old one.

    Returns:
        The new state.

    Raises:
        ValueError: if `opt_state` holds no `KeepPrunedState`, or the new mask's structure
            or shapes differ from the old one's.
    """
    found = []

    def swap(node):
        if not isinstance(node, KeepPrunedState):
            return node
        check_mask(node.mask, mask)
        found.append(True)
        return KeepPrunedState(mask=jax.tree.map(lambda m: jnp.asarray(m, bool), mask))

    new_state = jax.tree.map(
        swap, opt_state, is_leaf=lambda node: isinstance(node, KeepPrunedState)
    )
    if not found:
        raise ValueError("opt_state holds no keep_pruned state")
    return new_state
