"""ANP's pruning candidates and their vectorized validation sweep.

Pruning a neuron sets its mask to 0 (γ' = 0; its shift β stays, so the channel outputs the
constant β). A candidate prunes every channel with m ≤ t for a threshold t of a grid, or,
with `prune_by="count"`, the k globally lowest masks (`candidate_keeps`). Every candidate
and the unpruned model are evaluated on the defender's validation images in one vmapped
program (`sweep_accuracy`); in increasing order of pruning the last candidate within the
budget is kept (`choose_candidate`), and the choice is written into the mask pytree
(`pruning_mask`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.defenses.anp_masks import TRACES, _logits, perturbed_params
from jaxbd.defenses.curve import within_budget
from jaxbd.models.classifier import Classifier
from jaxbd.prune.masks import path_name
from jaxbd.types import PyTree

DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(19))  # 0.0, 0.05, ..., 0.9


def candidate_keeps(
    masks: Mapping[str, jax.Array], grid: Sequence[float], prune_by: str = "threshold"
) -> dict[str, jax.Array]:
    """The channel masks of the pruning candidates, the unpruned model first.

    Args:
        masks: path → f32[C] ANP masks.
        grid: with `prune_by="threshold"`, thresholds t (candidate prunes every channel with
            m ≤ t); with "count", fractions r of all masked channels (candidate prunes the
            round(r · total) channels of lowest m over all layers, ties in layer order then
            index order).
        prune_by: "threshold" or "count".

    Returns:
        path → f32[1 + len(grid), C], 1 = keep, 0 = prune; row 0 keeps everything.
    """
    names = list(masks)
    values = [np.asarray(jax.device_get(masks[n]), np.float32) for n in names]
    rows = []
    if prune_by == "threshold":
        for t in grid:
            rows.append([(v > t).astype(np.float32) for v in values])
    elif prune_by == "count":
        flat = np.concatenate(values)
        rank = np.empty(flat.size, np.int64)
        rank[np.argsort(flat, kind="stable")] = np.arange(flat.size)
        splits = np.cumsum([v.size for v in values])[:-1]
        for r in grid:
            k = int(np.floor(r * flat.size + 0.5 + 1e-9))  # round half up, not to even
            rows.append(np.split((rank >= k).astype(np.float32), splits))
    else:
        raise ValueError(f"prune_by must be 'threshold' or 'count', got {prune_by!r}")
    return {
        n: jnp.asarray(np.stack([np.ones_like(values[i])] + [row[i] for row in rows]))
        for i, n in enumerate(names)
    }


@functools.lru_cache(maxsize=32)
def _sweep_program(model: nn.Module, mean: tuple, std: tuple):
    """The jitted vectorized evaluation of pruning candidates on one batch of images.

    `program(params, batch_stats, keeps, images, labels, valid) -> int32[K]` correct counts
    per candidate: vmap over the K rows of `keeps` (path → f32[K, C]) of the inference
    forward with γ → γ · keep; `valid` (bool[B]) marks real images in a padded batch. Built
    once per `Classifier.engine_model()` and normalization (the tests read its compile
    count).
    """

    def program(params, batch_stats, keeps, images, labels, valid):
        TRACES["sweep"] += 1

        def correct(keep):
            logits = _logits(model, mean, std, perturbed_params(params, keep), batch_stats, images)
            return jnp.sum((jnp.argmax(logits, -1) == labels) & valid)

        return jax.vmap(correct)(keeps)

    return jax.jit(program)


def sweep_accuracy(
    classifier: Classifier,
    keeps: Mapping[str, jax.Array],
    images: np.ndarray | jax.Array,
    labels: np.ndarray | jax.Array,
    *,
    batch_size: int = 512,
) -> np.ndarray:
    """Accuracy of every pruning candidate, in one vectorized program.

    Args:
        classifier: the model (its BatchNorm scales are what the candidates mask).
        keeps: path → f32[K, C] candidate channel masks (`candidate_keeps`).
        images: uint8[N, H, W, 3] the validation images.
        labels: int[N] their labels.
        batch_size: images per call; the last batch is padded, so every call has one shape.

    Returns:
        f64[K] accuracy per candidate (NaN-free; N ≥ 1 required).
    """
    n = int(np.shape(labels)[0])
    if n < 1:
        raise ValueError("sweep_accuracy needs at least one validation image")
    program = _sweep_program(classifier.engine_model(), classifier.mean, classifier.std)
    params, batch_stats = classifier.params, classifier.batch_stats
    b = min(batch_size, n)
    images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
    total = 0
    for first in range(0, n, b):
        x, y = images[first : first + b], labels[first : first + b]
        real = int(y.shape[0])
        valid = jnp.arange(b) < real
        if real < b:  # Pad so every call has the same shape (one compile).
            x = jnp.concatenate([x, jnp.zeros((b - real, *x.shape[1:]), x.dtype)])
            y = jnp.concatenate([y, jnp.zeros((b - real,), y.dtype)])
        total = total + program(params, batch_stats, keeps, x, y, valid)
    return np.asarray(jax.device_get(total), np.float64) / n


def choose_candidate(
    accuracies: Sequence[float], num_pruned: Sequence[int], base: float, delta: float
) -> int:
    """The candidate kept: in increasing order of pruning, the last within the budget.

    Candidates are visited by increasing number of pruned channels (ties: grid order); the
    search ends at the first whose validation accuracy is more than `delta` below `base`.

    Args:
        accuracies: validation accuracy per candidate (grid order, unpruned excluded).
        num_pruned: channels each candidate prunes.
        base: the unpruned model's validation accuracy.
        delta: the budget, absolute.

    Returns:
        The index of the chosen candidate, or −1 for none (nothing is pruned).
    """
    chosen = -1
    for i in sorted(range(len(accuracies)), key=lambda i: (num_pruned[i], i)):
        if not within_budget(accuracies[i], base, delta):
            break
        if chosen < 0 or num_pruned[i] > num_pruned[chosen]:
            chosen = i
    return chosen


def pruning_mask(params: PyTree, keep: Mapping[str, jax.Array]) -> PyTree:
    """The 0/1 float mask pytree (like `params`) that zeroes the BatchNorm scale of the
    channels with keep = 0 (`keep`: path → f32[C]); 1 everywhere else (biases included)."""

    def leaf(path, p):
        ones = jnp.ones(np.shape(p), jnp.float32)
        module = path_name(path[:-1])
        if module in keep and path_name(path[-1:]) == "scale":
            return ones * jnp.asarray(keep[module], jnp.float32)
        return ones

    return jax.tree_util.tree_map_with_path(leaf, params)
