"""Neural Cleanse's trigger reverse-engineering (Wang et al. 2019), every label at once.

For every label t, the smallest mask m (H×W, in [0, 1]) and a pattern P (H×W×3, in [0, 1])
such that stamping them, x' = (1 − m)·x + m·P, sends clean images to t: minimize
CE(f(x'), t) + cost·‖m‖₁ with Adam, under the released code's cost schedule and early stop,
keeping the smallest-norm mask that reached the attack-success threshold.
`reverse_engineer(classifier, images, ...)` runs it as one jitted program: `vmap` over the
target label, the epochs and the cost schedule in `lax`, the defender's clean uint8 images on
the device in fixed-shape batches shared by every label. `stamp_uint8` stamps a reversed
trigger on uint8 images. The cost schedule in full and the defaults' provenance are in
docs/defenses.md.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbd.data.augment import normalize
from jaxbd.models.classifier import Classifier, EngineModel
from jaxbd.types import PyTree


class ReversedTriggers(NamedTuple):
    """The reverse-engineered trigger of each label (L labels; all C by default).

    Attributes:
        labels: int32[L] the target labels, in the order of the other fields.
        masks: float32[L, H, W] in [0, 1]: the kept (smallest-norm successful) mask.
        patterns: float32[L, H, W, 3] in [0, 1] pixel units.
        norms: float32[L] ℓ₁ norms of the masks (sum over the H×W pixels).
        attack_success: float32[L] fraction of the images that the stamped trigger sends to
            the label (the kept mask, every image given, in inference mode).
        reached: bool[L] whether some epoch reached the attack-success threshold; where not,
            the mask is the last one optimized (its `attack_success` says how far it got).
    """

    labels: jax.Array
    masks: jax.Array
    patterns: jax.Array
    norms: jax.Array
    attack_success: jax.Array
    reached: jax.Array


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The reverse-engineering settings (static: hashed into the compiled program)."""

    epochs: int
    batch_size: int
    lr: float
    init_cost: float
    threshold: float
    patience: int
    cost_multiplier: float
    early_stop: bool
    early_stop_threshold: float
    early_stop_patience: int


class _LabelState(NamedTuple):
    """One label's optimization state (every field gains a leading [L] axis under vmap)."""

    weights: tuple[jax.Array, jax.Array]  # unconstrained (mask f32[H, W], pattern f32[H, W, 3])
    opt_state: PyTree
    cost: jax.Array
    set_counter: jax.Array
    up_counter: jax.Array
    down_counter: jax.Array
    up_flag: jax.Array
    down_flag: jax.Array
    best_mask: jax.Array
    best_pattern: jax.Array
    best_reg: jax.Array
    early_stop_counter: jax.Array
    early_stop_reg: jax.Array
    done: jax.Array


def _to_unit(w: jax.Array) -> jax.Array:
    """The tanh parametrization of the released code: any real → [0, 1]."""
    return 0.5 * jnp.tanh(w) + 0.5


def _stamp(images01: jax.Array, mask: jax.Array, pattern: jax.Array) -> jax.Array:
    """x' = (1 − m)·x + m·P on float [0, 1] images [..., H, W, 3], mask [H, W]."""
    m = mask[..., None]
    return (1.0 - m) * images01 + m * pattern


def reverse_engineer(
    classifier: Classifier,
    images: jax.Array | np.ndarray,
    num_classes: int,
    *,
    key: jax.Array,
    labels: Sequence[int] | None = None,
    epochs: int = 80,
    batch_size: int = 128,
    lr: float = 0.1,
    init_cost: float = 1e-3,
    threshold: float = 0.99,
    patience: int = 5,
    cost_multiplier: float = 2.0,
    early_stop: bool = True,
    early_stop_threshold: float = 0.99,
    early_stop_patience: int = 25,
) -> ReversedTriggers:
    """Reverse-engineers a trigger for every label at once (one compiled program).

    Each label's mask and pattern start uniform at random (from `fold_in(key, label)`) and
    follow Adam (betas 0.5, 0.9) on CE(f(x'), t) + cost·‖m‖₁ over the same fixed-shape
    batches of `images` (a permutation per epoch from `key`; the remainder of an epoch is
    dropped), with the cost schedule and the early stop of the released code run per label
    in `lax`. The stamp works on float pixels in [0, 1] (x = images / 255, float32[B, H, W,
    3]); the classifier's own normalization is applied to 255·x'. The model is frozen and in
    inference mode. Compiled once per (classifier's module, image shape, number of labels,
    settings): other variables or normalization, images of the same shape or another key
    reuse the program.

    Args:
        classifier: the examined model (its parameters as they are: apply a pruning mask
            first).
        images: uint8[N, H, W, 3] clean images (host or device).
        num_classes: C.
        key: PRNG key (initial masks and patterns, batch order).
        labels: the target labels to optimize (default: all C).
        epochs: passes over the images (each label may stop earlier).
        batch_size: images per step (at most N).
        lr: Adam's learning rate.
        init_cost: the ℓ₁ cost's initial weight.
        threshold: the attack success an epoch must reach to count as successful.
        patience: epochs on one side of the threshold before the cost changes.
        cost_multiplier: the cost's factor up (down: its power 1.5).
        early_stop: stop a label once its best norm has not improved by more than
            `1 − early_stop_threshold` for `early_stop_patience` epochs, after its cost has
            gone both up and down.
        early_stop_threshold: see `early_stop`.
        early_stop_patience: see `early_stop`.

    Returns:
        The triggers, norms and attack success of each label (arrays on the device).

    Raises:
        ValueError: for no images, a label out of range, or a setting out of range.
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
        raise ValueError(f"images must be uint8[N >= 1, H, W, 3], got {images.shape}")
    labels = np.arange(num_classes) if labels is None else np.asarray(labels, np.int64)
    if labels.ndim != 1 or not len(labels) or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be a non-empty list in [0, {num_classes}), got {labels}")
    for name, value, ok in (
        ("epochs", epochs, epochs >= 1),
        ("batch_size", batch_size, batch_size >= 1),
        ("lr", lr, lr > 0),
        ("init_cost", init_cost, init_cost >= 0),
        ("threshold", threshold, 0 < threshold <= 1),
        ("patience", patience, patience >= 1),
        ("cost_multiplier", cost_multiplier, cost_multiplier > 1),
        ("early_stop_threshold", early_stop_threshold, 0 < early_stop_threshold <= 1),
        ("early_stop_patience", early_stop_patience, early_stop_patience >= 1),
    ):
        if not ok:
            raise ValueError(f"{name} out of range: {value!r}")
    settings = _Settings(
        epochs=int(epochs),
        # Fixed-shape batches: a defender with fewer images than a batch uses them all.
        batch_size=int(min(batch_size, images.shape[0])),
        lr=float(lr),
        init_cost=float(init_cost),
        threshold=float(threshold),
        patience=int(patience),
        cost_multiplier=float(cost_multiplier),
        early_stop=bool(early_stop),
        early_stop_threshold=float(early_stop_threshold),
        early_stop_patience=int(early_stop_patience),
    )
    masks, patterns, norms, success, reached = _reverse_program(
        _apply_fn(classifier.engine_model()),
        settings,
        classifier.variables,
        images,
        jnp.asarray(labels, jnp.int32),
        key,
        # Traced inputs, not constants: one program serves every normalization.
        jnp.asarray(classifier.mean, jnp.float32),
        jnp.asarray(classifier.std, jnp.float32),
    )
    return ReversedTriggers(
        labels=jnp.asarray(labels, jnp.int32),
        masks=masks,
        patterns=patterns,
        norms=norms,
        attack_success=success,
        reached=reached,
    )


def _logits(out) -> jax.Array:
    """The logits of a model output that may be `(logits, features, ...)`."""
    if isinstance(out, tuple | list):
        out = out[0]
    return out.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _reverse_program(apply_fn, s: _Settings, variables, images, labels, key, mean, std):
    """The whole reverse-engineering: vmap over `labels` of one label's optimization.

    Returns (masks f32[L, H, W], patterns f32[L, H, W, 3], norms f32[L], attack success
    f32[L], reached bool[L]).
    """
    n, height, width = images.shape[:3]
    b = s.batch_size
    steps_per_epoch = n // b
    tx = optax.adam(s.lr, b1=0.5, b2=0.9)
    # Inference mode, frozen: no gradient may reach the model.
    variables = jax.lax.stop_gradient(variables)
    data_key, init_key = jax.random.split(key)

    def logits_of(images01):
        x = normalize(images01 * 255.0, mean, std)
        return _logits(apply_fn(variables, x))

    def objective(weights, x, target, cost):
        mask, pattern = _to_unit(weights[0]), _to_unit(weights[1])
        logits = logits_of(_stamp(x, mask, pattern))
        ce = optax.softmax_cross_entropy_with_integer_labels(
            logits, jnp.full(x.shape[0], target)
        ).mean()
        # The mask is shared by every image, so its per-image ℓ₁ averaged over the batch is
        # just ‖m‖₁ (m ≥ 0 under the tanh parametrization).
        reg = jnp.sum(mask)
        success = jnp.mean(jnp.argmax(logits, -1) == target)
        return ce + cost * reg, (success, reg)

    def one_label(target):
        k_mask, k_pattern = jax.random.split(jax.random.fold_in(init_key, target))
        # Uniform random start, as the released code; the clip keeps arctanh finite.
        unit = lambda k, shape: jnp.arctanh(  # noqa: E731
            jnp.clip(2.0 * jax.random.uniform(k, shape) - 1.0, -0.999, 0.999)
        )
        weights = (unit(k_mask, (height, width)), unit(k_pattern, (height, width, 3)))
        zero = jnp.zeros((), jnp.int32)
        state = _LabelState(
            weights=weights,
            opt_state=tx.init(weights),
            cost=jnp.asarray(s.init_cost, jnp.float32),
            set_counter=zero,
            up_counter=zero,
            down_counter=zero,
            up_flag=jnp.array(False),
            down_flag=jnp.array(False),
            best_mask=_to_unit(weights[0]),
            best_pattern=_to_unit(weights[1]),
            best_reg=jnp.asarray(jnp.inf, jnp.float32),
            early_stop_counter=zero,
            early_stop_reg=jnp.asarray(jnp.inf, jnp.float32),
            done=jnp.array(False),
        )

        def step(state, batch_indices):
            x = images[batch_indices].astype(jnp.float32) / 255.0
            grads, (success, reg) = jax.grad(objective, has_aux=True)(
                state.weights, x, target, state.cost
            )
            updates, opt_state = tx.update(grads, state.opt_state, state.weights)
            weights = optax.apply_updates(state.weights, updates)
            # A label that stopped early keeps its weights while the others go on.
            keep = lambda new, old: jax.tree.map(  # noqa: E731
                lambda a, c: jnp.where(state.done, c, a), new, old
            )
            state = state._replace(
                weights=keep(weights, state.weights), opt_state=keep(opt_state, state.opt_state)
            )
            return state, (success, reg)

        def epoch(state, e):
            # The batch order depends on the epoch only, so every label sees the same batches
            # (under vmap the gather and the data stay unbatched).
            order = jax.random.permutation(jax.random.fold_in(data_key, e), n)
            batches = order[: steps_per_epoch * b].reshape(steps_per_epoch, b)
            state, (successes, regs) = jax.lax.scan(step, state, batches)
            return _end_of_epoch(s, state, successes.mean(), regs.mean()), None

        state, _ = jax.lax.scan(epoch, state, jnp.arange(s.epochs))
        reached = jnp.isfinite(state.best_reg)
        # No successful epoch: report the last mask (its attack success shows the failure).
        mask = jnp.where(reached, state.best_mask, _to_unit(state.weights[0]))
        pattern = jnp.where(reached, state.best_pattern, _to_unit(state.weights[1]))
        return mask, pattern, jnp.sum(mask), success_rate(mask, pattern, target), reached

    def success_rate(mask, pattern, target):
        # Every image, in fixed-shape batches (the last one padded and weighted out).
        batches = -(-n // b)
        index = jnp.arange(batches * b)
        valid = (index < n).reshape(batches, b)
        index = jnp.minimum(index, n - 1).reshape(batches, b)

        def count(total, batch):
            idx, ok = batch
            x = images[idx].astype(jnp.float32) / 255.0
            hits = jnp.argmax(logits_of(_stamp(x, mask, pattern)), -1) == target
            return total + jnp.sum(hits & ok), None

        total, _ = jax.lax.scan(count, jnp.zeros((), jnp.int32), (index, valid))
        return total.astype(jnp.float32) / n

    return jax.vmap(one_label)(labels)


def _end_of_epoch(s: _Settings, state: _LabelState, success, reg) -> _LabelState:
    """The released code's bookkeeping after an epoch (mean attack success and ℓ₁ over its
    batches), as `lax` selects so it runs per label under vmap; a label already stopped
    keeps its state."""
    successful = success >= s.threshold
    # Keep the smallest-norm mask whose epoch reached the threshold.
    better = successful & (reg < state.best_reg)
    mask, pattern = _to_unit(state.weights[0]), _to_unit(state.weights[1])
    best_mask = jnp.where(better, mask, state.best_mask)
    best_pattern = jnp.where(better, pattern, state.best_pattern)
    best_reg = jnp.where(better, reg, state.best_reg)

    # Early stop: the best norm stalled (no 1% improvement) for a while after the cost has
    # been both raised and lowered, i.e. the search has bracketed the cost.
    stalled = best_reg >= s.early_stop_threshold * state.early_stop_reg
    early_stop_counter = jnp.where(
        jnp.isfinite(best_reg),
        jnp.where(stalled, state.early_stop_counter + 1, 0),
        state.early_stop_counter,
    )
    early_stop_reg = jnp.minimum(state.early_stop_reg, best_reg)
    stop = (
        s.early_stop
        & state.up_flag
        & state.down_flag
        & (early_stop_counter >= s.early_stop_patience)
    )

    # The cost schedule (skipped in the epoch that stops). A zero cost (init_cost = 0) is
    # set to the initial cost after `patience` successful epochs, as in the released code.
    cost, up_flag, down_flag = state.cost, state.up_flag, state.down_flag
    up_counter, down_counter = state.up_counter, state.down_counter
    at_zero = (cost == 0) & successful
    set_counter = jnp.where(at_zero, state.set_counter + 1, 0)
    reset = at_zero & (set_counter >= s.patience)
    cost = jnp.where(reset, s.init_cost, cost)
    up_counter = jnp.where(reset, 0, up_counter)
    down_counter = jnp.where(reset, 0, down_counter)
    up_flag = jnp.where(reset, False, up_flag)
    down_flag = jnp.where(reset, False, down_flag)
    up_counter = jnp.where(successful, up_counter + 1, 0)
    down_counter = jnp.where(successful, 0, down_counter + 1)
    go_up = up_counter >= s.patience
    go_down = ~go_up & (down_counter >= s.patience)
    cost = jnp.where(go_up, cost * s.cost_multiplier, cost)
    cost = jnp.where(go_down, cost / s.cost_multiplier**1.5, cost)
    up_counter = jnp.where(go_up, 0, up_counter)
    down_counter = jnp.where(go_down, 0, down_counter)
    up_flag = up_flag | go_up
    down_flag = down_flag | go_down

    scheduled = state._replace(
        cost=cost,
        set_counter=set_counter,
        up_counter=up_counter,
        down_counter=down_counter,
        up_flag=up_flag,
        down_flag=down_flag,
    )
    # The stopping epoch records its best mask and early-stop counters but not the schedule.
    new = jax.tree.map(lambda a, c: jnp.where(stop, c, a), scheduled, state)
    new = new._replace(
        best_mask=best_mask,
        best_pattern=best_pattern,
        best_reg=best_reg,
        early_stop_counter=early_stop_counter,
        early_stop_reg=early_stop_reg,
        done=stop,
    )
    return jax.tree.map(lambda a, c: jnp.where(state.done, c, a), new, state)


def stamp_uint8(images: np.ndarray, mask: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Stamps a reversed trigger on uint8 images, rounded back to uint8.

    Args:
        images: uint8[N, H, W, 3].
        mask: float[H, W] in [0, 1].
        pattern: float[H, W, 3] in [0, 1].

    Returns:
        uint8[N, H, W, 3]: round(255 · ((1 − m)·x + m·P)).
    """
    x = np.asarray(images, np.float32) / 255.0
    m = np.asarray(mask, np.float32)[..., None]
    stamped = (1.0 - m) * x + m * np.asarray(pattern, np.float32)
    return np.clip(np.rint(stamped * 255.0), 0, 255).astype(np.uint8)


def _apply_fn(model: EngineModel) -> Callable[[PyTree, jax.Array], jax.Array]:
    """`apply_fn(variables, x float32[B, H, W, 3] normalized) -> logits float32[B, C]` of an
    engine model, in inference mode: the static argument of `_reverse_program`. One function
    per model (they compare by their fields), so a model's compiled program is reused by
    every later call."""
    fn = _APPLY_FNS.get(model)
    if fn is None:

        def fn(variables, x):
            return _logits(model.apply(variables, x, train=False))

        _APPLY_FNS[model] = fn
    return fn


_APPLY_FNS: dict[Any, Callable] = {}
