"""Grad-Prune's scores: the unlearning gradient of every conv filter and the global argmax.

The unlearning loss is the mean cross-entropy of the defender's triggered images with their
*true* labels. Its gradient is summed over fixed-shape batches (`unlearning_gradients`, the
model in inference mode unless the reference variant asks for its first batch in training
mode); every filter k of every conv scores mean |g| over its kernel slice `kernel[..., k]`
(`filter_scores`), and the highest-scoring filter not yet pruned is chosen (`choose_filter`).
Each program is jitted once per classifier module and normalization (`programs_for`;
`TRACES` counts their traces): the mask, the pruned-filter flags and the batch order are
data, so pruning more filters never recompiles.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbd.data import augment as augment_lib
from jaxbd.models.classifier import Classifier
from jaxbd.prune.channels import ConvBN, module_params
from jaxbd.types import PyTree

Path = tuple[str, ...]

TRACES: collections.Counter = collections.Counter()
"""How often each jitted program was traced ("grad", "grad_train", "choose", "loss"): the
tests read it to check that pruning more filters compiles nothing new."""


def filter_scores(kernel_grads: Sequence[jax.Array]) -> list[jax.Array]:
    """Mean absolute gradient of every filter.

    Args:
        kernel_grads: per conv, the gradient of its kernel, f32[kh, kw, C_in, C_out].

    Returns:
        Per conv, f32[C_out]: mean |g| over `g[..., k]` (all axes but the output one).
    """
    return [jnp.mean(jnp.abs(g), axis=tuple(range(g.ndim - 1))) for g in kernel_grads]


def choose_filter(
    kernel_grads: Sequence[jax.Array], keep: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The global argmax filter among the unpruned ones (traceable).

    Args:
        kernel_grads: per conv (in the map's order), the gradient of its kernel,
            f32[kh, kw, C_in, C_out].
        keep: f32[F] over all F filters concatenated in the same order (conv 0's C_out
            filters first): 1 for a candidate, 0 for an already-pruned filter.

    Returns:
        (int32[] the flat index of the chosen filter, f32[] its score); ties go to the first
        in order. When no filter is left the score is −∞ (the caller must check).
    """
    scores = jnp.concatenate(filter_scores(kernel_grads))
    masked = jnp.where(keep > 0, scores, -jnp.inf)
    index = jnp.argmax(masked)
    return index.astype(jnp.int32), masked[index]


def flat_offsets(pairs: Sequence[ConvBN]) -> np.ndarray:
    """int64[len(pairs) + 1] where each conv's filters start in the flat filter order."""
    return np.concatenate([[0], np.cumsum([p.out_channels for p in pairs])]).astype(np.int64)


def unflatten_filter(pairs: Sequence[ConvBN], index: int) -> tuple[int, int]:
    """(conv position in `pairs`, filter index in that conv) of a flat filter index."""
    offsets = flat_offsets(pairs)
    if not 0 <= index < offsets[-1]:
        raise ValueError(f"flat filter index {index} is not in [0, {offsets[-1]})")
    conv = int(np.searchsorted(offsets, index, side="right") - 1)
    return conv, int(index - offsets[conv])


def keep_vector(pairs: Sequence[ConvBN], pruned: Sequence[tuple[Path, int]]) -> np.ndarray:
    """f32[F]: 0 at the pruned filters (conv path, filter), 1 elsewhere (flat order)."""
    offsets = flat_offsets(pairs)
    position = {p.conv: i for i, p in enumerate(pairs)}
    keep = np.ones(offsets[-1], np.float32)
    for conv, k in pruned:
        keep[offsets[position[tuple(conv)]] + k] = 0.0
    return keep


# -- the jitted programs ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Programs:
    grad: Callable
    choose: Callable
    loss: Callable


@functools.lru_cache(maxsize=16)
def _programs(model: nn.Module, mean: tuple, std: tuple, convs: tuple[Path, ...]) -> _Programs:
    """The jitted programs of one model (built once; masks and batch orders are data)."""

    def batch_loss(params, batch_stats, images, labels, weights, train):
        x = augment_lib.normalize(images, mean, std)
        variables = {"params": params, "batch_stats": batch_stats}
        if train:
            (logits, _), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
            batch_stats = updates["batch_stats"]
        else:
            logits, _ = model.apply(variables, x, train=False)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return jnp.sum(weights * ce), batch_stats

    def masked(params, mask):
        return jax.tree.map(lambda p, m: p * m.astype(p.dtype), params, mask)

    def grad(acc, params, batch_stats, mask, images, labels, weights, rows, i, *, train):
        # acc: (per-conv kernel-gradient sums, loss sum). Rows int32[nb, b] of the batch
        # order and weights f32[nb, b] (0 on padding) are data: a new order compiles nothing.
        TRACES["grad_train" if train else "grad"] += 1
        index, w = rows[i], weights[i]
        (loss, stats), g = jax.value_and_grad(batch_loss, has_aux=True)(
            masked(params, mask), batch_stats, images[index], labels[index], w, train
        )
        kernels = tuple(module_params(g, c)["kernel"] for c in convs)
        sums = tuple(a + k for a, k in zip(acc[0], kernels, strict=True))
        return (sums, acc[1] + loss), stats

    def choose(sums, count, keep):
        TRACES["choose"] += 1
        return choose_filter([s / count for s in sums], keep)

    def loss(acc, params, batch_stats, mask, images, labels, weights, rows, i):
        TRACES["loss"] += 1
        index = rows[i]
        value, _ = batch_loss(
            masked(params, mask), batch_stats, images[index], labels[index], weights[i], False
        )
        return acc + value

    return _Programs(
        grad=jax.jit(grad, static_argnames="train", donate_argnums=0),
        choose=jax.jit(choose),
        loss=jax.jit(loss),
    )


def batch_rows(order: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-shape batches of an example order.

    Args:
        order: int[N] example indices, in the order they are batched.
        batch_size: B (≤ N is not required: one padded batch then).

    Returns:
        (int32[nb, B] rows, f32[nb, B] weights): nb = ⌈N / B⌉, the last batch padded with
        row 0 at weight 0, so every batch has one shape and padding adds nothing.
    """
    n = len(order)
    nb = max(1, math.ceil(n / batch_size))
    rows = np.zeros(nb * batch_size, np.int32)
    weights = np.zeros(nb * batch_size, np.float32)
    rows[:n], weights[:n] = order, 1.0
    return rows.reshape(nb, batch_size), weights.reshape(nb, batch_size)


def programs_for(classifier: Classifier, convs: Sequence[Path]) -> _Programs:
    """The jitted programs of a classifier's module and normalization (compiled once; its
    variables, masks and batch orders are data)."""
    return _programs(classifier.engine_model(), classifier.mean, classifier.std, tuple(convs))


def unlearning_gradients(
    classifier: Classifier,
    convs: Sequence[Path],
    images: jax.Array,
    labels: jax.Array,
    rows: jax.Array,
    weights: jax.Array,
    *,
    first_batch_train: bool = False,
) -> tuple[tuple[jax.Array, ...], jax.Array, PyTree]:
    """Summed unlearning gradients of the convs' kernels over all batches.

    Args:
        classifier: the model; its `mask` (float 0/1 like the parameters; None: dense) is
            applied to its parameters inside.
        convs: the conv paths, in the map's order.
        images: uint8[N, H, W, 3] the triggered tuning images (on the devices).
        labels: int32[N] their TRUE labels.
        rows: int32[nb, B] the batches (`batch_rows`).
        weights: f32[nb, B] 1 on real examples, 0 on padding.
        first_batch_train: run batch 0 in training mode and keep its updated running
            statistics for the later batches (the reference variant's quirk (b); batch 0 must
            then have no padding).

    Returns:
        (per conv f32[kh, kw, C_in, C_out] Σ_i ∂CE_i/∂kernel, f32[] Σ_i CE_i, the BatchNorm
        statistics after the pass: updated by batch 0 when `first_batch_train`, else the
        input ones).
    """
    programs = programs_for(classifier, convs)
    params, batch_stats = classifier.params, classifier.batch_stats
    mask = classifier.mask
    if mask is None:
        mask = jax.tree.map(lambda p: jnp.ones(np.shape(p), jnp.float32), params)
    acc = (
        tuple(jnp.zeros(np.shape(module_params(params, c)["kernel"]), jnp.float32) for c in convs),
        jnp.zeros((), jnp.float32),
    )
    # The accumulator lives where the data does, as the program's outputs will: a first call
    # with differently placed zeros would compile a second time.
    acc = jax.device_put(acc, images.sharding)
    for i in range(int(rows.shape[0])):
        train = first_batch_train and i == 0
        acc, stats = programs.grad(
            acc, params, batch_stats, mask, images, labels, weights, rows, i, train=train
        )
        if train:
            batch_stats = stats
    return acc[0], acc[1], batch_stats
