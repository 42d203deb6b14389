"""CTI's pure pieces: the per-class trigger inversion and the calibrated scores.

`invert_triggers` optimizes one additive full-image δ_c per class (Adam on
CE(poisoned(clip(x + δ_c)), c) + w·CE(repaired(clip(x + δ_c)), y) over the images not of
class c) as one jitted program: `vmap` over c, the steps in `lax.scan`, each step's batch
shared by every class (class c's own images are weighted out, not indexed away, so every
shape is fixed). `cti_scores` scores every class in one program too. Both take
`logits_fn(images01 f32[B, H, W, 3] in [0, 1]) -> f32[B, C]` callables that normalize inside
(`float_logits_fn(classifier)` builds one as a `jax.tree_util.Partial`, so the variables are
traced inputs and one compilation serves every model of an architecture).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbd.data.augment import normalize
from jaxbd.models.classifier import Classifier, EngineModel

LogitsFn = Callable[[jax.Array], jax.Array]
"""`logits_fn(images01 float32[B, H, W, 3] in [0, 1]) -> float32[B, C]`, normalization
included; jittable (ideally a `jax.tree_util.Partial`, whose leaves jit traces)."""


class CTIScores(NamedTuple):
    """The per-class result of scoring the inverted triggers.

    Attributes:
        poisoned_success: float32[C] fraction of the judged images (not of class c) that
            δ_c sends to c on the examined model.
        repaired_success: float32[C] the same on the repaired model.
        scores: float32[C] poisoned_success − repaired_success.
        judged: int32[C] the number of judged images per class.
    """

    poisoned_success: jax.Array
    repaired_success: jax.Array
    scores: jax.Array
    judged: jax.Array


def float_logits_fn(classifier: Classifier) -> jax.tree_util.Partial:
    """`images01 f32[B, H, W, 3] in [0, 1] -> logits f32[B, C]` of a classifier in inference
    mode: `Classifier.logits_fn` on float pixels (a perturbed image is not uint8), the
    classifier's normalization applied to 255 · images01.

    Args:
        classifier: the model (its parameters as they are: apply a pruning mask first).

    Returns:
        A `jax.tree_util.Partial` whose leaves are the variables; the function is one object
        per (module, mean, std), so every model of an architecture reuses the compiled CTI
        programs.
    """
    apply = _float_apply(classifier.engine_model(), classifier.mean, classifier.std)
    return jax.tree_util.Partial(apply, classifier.params, classifier.batch_stats)


@functools.cache
def _float_apply(model: EngineModel, mean: tuple, std: tuple):
    def apply(params, batch_stats, images01):
        x = normalize(images01 * 255.0, mean, std)
        out = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
        if isinstance(out, tuple | list):
            out = out[0]
        return out.astype(jnp.float32)

    return apply


def invert_triggers(
    poisoned_fn: LogitsFn,
    repaired_fn: LogitsFn,
    images: jax.Array | np.ndarray,
    labels: jax.Array | np.ndarray,
    num_classes: int,
    *,
    key: jax.Array,
    steps: int = 50,
    lr: float = 0.01,
    b1: float = 0.5,
    b2: float = 0.9,
    init_scale: float = 0.01,
    repaired_weight: float = 0.5,
    norm_weight: float = 0.0,
    batch_size: int = 128,
) -> tuple[jax.Array, jax.Array]:
    """Optimizes one additive full-image δ per class, every class in one compiled program.

    δ_c starts as U(0, 1)·init_scale (from `fold_in(key, c)`) and follows Adam on the mean,
    over a batch's images not of class c, of `CE(poisoned(clip(x + δ)), c) +
    repaired_weight · CE(repaired(clip(x + δ)), y)`, plus `norm_weight · ‖δ‖₂`. Each step's
    batch (a random `batch_size` of the images, from `key` and the step) is shared by every
    class; images of class c weigh 0 in its loss. Compiled once per (logits functions'
    structure, image shape, C, settings).

    Args:
        poisoned_fn: the examined model's logits of [0, 1] images (see `LogitsFn`).
        repaired_fn: the repaired reference's.
        images: uint8[N, H, W, 3] the defender's clean tuning images.
        labels: int[N] their labels.
        num_classes: C.
        key: PRNG key (initial δs, batches).
        steps: Adam steps.
        lr: Adam's learning rate.
        b1: Adam's β₁.
        b2: Adam's β₂.
        init_scale: scale of the uniform initialization.
        repaired_weight: weight of the repaired model's cross-entropy.
        norm_weight: weight of ‖δ‖₂ (0: no penalty).
        batch_size: images per step (at most N).

    Returns:
        (deltas float32[C, H, W, 3], losses float32[C, steps]) — each class's loss before
        each step.

    Raises:
        ValueError: for no images, mismatched labels, or a setting out of range.
    """
    images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
        raise ValueError(f"images must be uint8[N >= 1, H, W, 3], got {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be int[{images.shape[0]}], got {labels.shape}")
    for name, value, ok in (
        ("num_classes", num_classes, num_classes >= 2),
        ("steps", steps, steps >= 1),
        ("lr", lr, lr > 0),
        ("batch_size", batch_size, batch_size >= 1),
        ("init_scale", init_scale, init_scale >= 0),
        ("repaired_weight", repaired_weight, repaired_weight >= 0),
        ("norm_weight", norm_weight, norm_weight >= 0),
    ):
        if not ok:
            raise ValueError(f"{name} out of range: {value!r}")
    return _invert_program(
        poisoned_fn,
        repaired_fn,
        images,
        labels,
        key,
        num_classes=int(num_classes),
        steps=int(steps),
        batch_size=int(min(batch_size, images.shape[0])),
        lr=float(lr),
        b1=float(b1),
        b2=float(b2),
        init_scale=float(init_scale),
        repaired_weight=float(repaired_weight),
        norm_weight=float(norm_weight),
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "num_classes",
        "steps",
        "batch_size",
        "lr",
        "b1",
        "b2",
        "init_scale",
        "repaired_weight",
        "norm_weight",
    ),
)
def _invert_program(
    poisoned_fn,
    repaired_fn,
    images,
    labels,
    key,
    *,
    num_classes,
    steps,
    batch_size,
    lr,
    b1,
    b2,
    init_scale,
    repaired_weight,
    norm_weight,
):
    n = images.shape[0]
    tx = optax.adam(lr, b1=b1, b2=b2)
    init_key, data_key = jax.random.split(key)

    def one_class(c):
        delta = init_scale * jax.random.uniform(jax.random.fold_in(init_key, c), images.shape[1:])

        def objective(delta, x, y):
            xd = jnp.clip(x + delta, 0.0, 1.0)
            ce_poisoned = optax.softmax_cross_entropy_with_integer_labels(
                poisoned_fn(xd), jnp.full_like(y, c)
            )
            ce_repaired = optax.softmax_cross_entropy_with_integer_labels(repaired_fn(xd), y)
            # Class c's own images say nothing about a trigger *to* c: weighted out, so the
            # batch keeps its shape under vmap.
            w = (y != c).astype(jnp.float32)
            per_image = ce_poisoned + repaired_weight * ce_repaired
            loss = jnp.sum(w * per_image) / jnp.maximum(jnp.sum(w), 1.0)
            if norm_weight > 0:  # static; sqrt's gradient at 0 would be NaN otherwise
                loss = loss + norm_weight * jnp.sqrt(jnp.sum(delta * delta) + 1e-12)
            return loss

        def step(carry, t):
            delta, opt_state = carry
            # The batch depends on the step only, so the gather stays unbatched under vmap.
            idx = jax.random.permutation(jax.random.fold_in(data_key, t), n)[:batch_size]
            x = images[idx].astype(jnp.float32) / 255.0
            loss, grad = jax.value_and_grad(objective)(delta, x, labels[idx])
            updates, opt_state = tx.update(grad, opt_state, delta)
            return (optax.apply_updates(delta, updates), opt_state), loss

        (delta, _), losses = jax.lax.scan(step, (delta, tx.init(delta)), jnp.arange(steps))
        return delta, losses

    # Both models are frozen: no gradient reaches their variables.
    poisoned_fn = jax.lax.stop_gradient(poisoned_fn)
    repaired_fn = jax.lax.stop_gradient(repaired_fn)
    return jax.vmap(one_class)(jnp.arange(num_classes))


def cti_scores(
    poisoned_fn: LogitsFn,
    repaired_fn: LogitsFn,
    deltas: jax.Array,
    images: jax.Array | np.ndarray,
    labels: jax.Array | np.ndarray,
    *,
    batch_size: int = 256,
) -> CTIScores:
    """Each class's calibrated score: δ_c's success on the examined model minus on the
    repaired one, over the images not of class c (one compiled program, every class).

    Args:
        poisoned_fn: the examined model's logits of [0, 1] images.
        repaired_fn: the repaired reference's.
        deltas: float32[C, H, W, 3] from `invert_triggers`.
        images: uint8[M, H, W, 3] the defender's held-out clean images.
        labels: int[M] their labels.
        batch_size: images per block (the last block padded and weighted out).

    Returns:
        The per-class successes, scores and judged counts (a class with no judged image
        scores 0).
    """
    images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be uint8[M >= 1, H, W, 3], got {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be int[{images.shape[0]}], got {labels.shape}")
    block = int(min(batch_size, images.shape[0]))
    hits, judged = _score_program(poisoned_fn, repaired_fn, deltas, images, labels, block=block)
    rate = hits / jnp.maximum(judged, 1)[None].astype(jnp.float32)
    return CTIScores(
        poisoned_success=rate[0],
        repaired_success=rate[1],
        scores=rate[0] - rate[1],
        judged=judged,
    )


@functools.partial(jax.jit, static_argnames=("block",))
def _score_program(poisoned_fn, repaired_fn, deltas, images, labels, *, block):
    """(hits float32[2, C] on the poisoned and repaired models, judged int32[C])."""
    m = images.shape[0]
    num_classes = deltas.shape[0]
    blocks = -(-m // block)
    index = jnp.arange(blocks * block)
    valid = (index < m).reshape(blocks, block)
    index = jnp.minimum(index, m - 1).reshape(blocks, block)

    def count(totals, batch):
        idx, ok = batch
        x, y = images[idx].astype(jnp.float32) / 255.0, labels[idx]

        def per_class(c, delta):
            xd = jnp.clip(x + delta, 0.0, 1.0)
            judged = ok & (y != c)
            hit_p = judged & (jnp.argmax(poisoned_fn(xd), -1) == c)
            hit_r = judged & (jnp.argmax(repaired_fn(xd), -1) == c)
            return jnp.stack([hit_p.sum(), hit_r.sum()]).astype(jnp.float32), judged.sum()

        hits, judged = jax.vmap(per_class)(jnp.arange(num_classes), deltas)
        return (totals[0] + hits.T, totals[1] + judged.astype(jnp.int32)), None

    zeros = (jnp.zeros((2, num_classes), jnp.float32), jnp.zeros(num_classes, jnp.int32))
    (hits, judged), _ = jax.lax.scan(count, zeros, (index, valid))
    return hits, judged
