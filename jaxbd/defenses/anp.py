"""ANP: prune the BatchNorm channels whose loss is most sensitive to adversarial perturbation.

Wu and Wang 2021 ("Adversarial Neuron Pruning Purifies Backdoored Deep Models", NeurIPS)
observe that a backdoored network, once its neurons are slightly perturbed, tends to fall into
predicting the target label even on clean inputs: the backdoor's neurons are the sensitive
ones. ANP learns a mask m ∈ [0, 1] per neuron (per BatchNorm channel) that keeps clean
accuracy under the worst bounded multiplicative perturbation of the neurons, and prunes the
neurons whose mask falls low.

Parametrization (the paper's Eq. 3–5, as the authors' code implements them in its
`NoisyBatchNorm2d`: `neuron_mask`, `neuron_noise`, `neuron_noise_bias`). For a BatchNorm
channel with scale γ and shift β, mask m (init 1) and noises δ, ξ ∈ [−ε, ε]:

    clean:     γ' = γ · m,        β' = β
    perturbed: γ' = γ · (m + δ),  β' = β · (1 + ξ)

implemented by transforming the parameter pytree before `model.apply` (`perturbed_params`),
so any flax model with BatchNorm works unchanged. BatchNorm runs in inference mode (the
running statistics), so the masks are optimized on the network that is deployed. (The
authors' loop runs the model in training mode, normalizing with batch statistics and letting
the running statistics drift, then reloads the original checkpoint before pruning; jaxbd does
not copy that mismatch.)

Per iteration, on a batch drawn with replacement from the defender's tuning images (crop and
flip augmentation, as the authors' loader applies the training transform):

1. δ, ξ ~ U(−ε, ε); `noise_steps` signed-gradient ascent steps on CE(perturbed) of size
   ε / noise_steps, each clipped back to [−ε, ε] (skipped when ε = 0);
2. one SGD step (lr 0.2, momentum 0.9, PyTorch's momentum convention) on the masks of
   α · CE(clean) + (1 − α) · CE(perturbed) (the noise held fixed), then m ← clip(m, 0, 1).

All iterations run in one compiled function (a jitted step, or a `lax.scan` over a chunk of
iterations on accelerators), with the data, masks and optimizer state on the device.

Pruning, as in the paper: pruning a neuron sets its mask to 0, i.e. γ' = 0 (its shift β is
kept: the channel then outputs the constant β before the activation). Candidates are the
thresholds of a grid (prune every channel with m ≤ t; default 0.0, 0.05, …, 0.9, the authors'
`pruning_max` / `pruning_step`) or, with `prune_by="count"`, the k globally lowest masks.
All candidates are evaluated on the defender's *validation* images in one vectorized program
(vmap over the candidates' channel masks), together with the unpruned model; in increasing
order of pruning the last candidate within `delta_prune` of the unpruned validation accuracy
is kept (the first one outside the budget ends the search). Never the test set: BackdoorBench
chooses the threshold by test ASR (its issue #35); a test-set-chosen figure belongs in
`oracle_*` numbers only, which the caller can compute from `details["mask_values"]` with
`candidate_keeps`. The choice is written into the `Variables.mask` pytree (0 on the pruned
channels' BatchNorm scale), so the engine keeps them at exactly zero through any fine-tuning.

Defaults: ε = 0.4, α = 0.2, one ascent step, mask lr 0.2 with momentum 0.9, 2000 iterations
of batch 128 are the paper's CIFAR-10 settings (and BackdoorBench's); ANP prunes without
fine-tuning (`steps=0`), and the optional fine-tuning defaults (lr 1e-3, momentum 0.9, weight
decay 5e-4) are those of jaxbd's other pruning repair.

This module is longer than most: a defense is one file (the perturbation, the jitted mask
optimization, the vectorized threshold sweep and the repair), so the method reads in one
place.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbd.data import augment as augment_lib
from jaxbd.defenses.base import Candidates, RepairContext, TuningPlan, Variables
from jaxbd.defenses.curve import within_budget
from jaxbd.defenses.finetune import check_optimizer
from jaxbd.prune.masks import apply_mask, check_mask, path_name
from jaxbd.settings import require, require_int
from jaxbd.train.epoch_order import largest_divisor_at_most

PyTree = Any
Masks = dict[str, jax.Array]
"""One f32[C] array per BatchNorm layer, keyed by the layer's "/"-joined module path."""

DEFAULT_GRID = tuple(round(0.05 * i, 2) for i in range(19))  # 0.0, 0.05, ..., 0.9

# fold_in tag of the mask-optimization stream (draws batches, augmentation and noise).
_MASK_STREAM = 0x414E50

# How often each compiled program was traced ("optimize_masks", "sweep"): a Python side
# effect of tracing only, so a recompile (new shapes, dtypes or settings) shows up here. The
# jit cache's own size also counts inputs that merely differ in placement, which reuse the
# same trace.
TRACES: collections.Counter = collections.Counter()


# -- the BatchNorm layers and the perturbed parameters --------------------------------------


def bn_layers(params: PyTree, batch_stats: PyTree | None = None) -> tuple[str, ...]:
    """The BatchNorm modules of a parameter tree, found by their structure.

    A flax `BatchNorm` holds exactly two parameters, `scale` and `bias`, both f32[C], and
    `mean` and `var` (f32[C]) in `batch_stats` at the same path. Layers are identified by that
    structure, never by names or parameter order. Without `batch_stats`, a LayerNorm (same
    parameters, no statistics) would also match: pass them whenever you have them.

    Args:
        params: the model's parameters.
        batch_stats: its BatchNorm statistics; when given, a module counts only if it holds
            `mean` and `var` of its channel count there.

    Returns:
        The modules' "/"-joined paths, in the tree's (sorted-key) order.
    """
    params_by_module = _leaves_by_module(params)
    stats_by_module = None if batch_stats is None else _leaves_by_module(batch_stats)
    found = []
    for module, leaves in params_by_module.items():
        if set(leaves) != {"scale", "bias"}:
            continue
        shape = np.shape(leaves["scale"])
        if len(shape) != 1 or np.shape(leaves["bias"]) != shape:
            continue
        if stats_by_module is not None:
            stats = stats_by_module.get(module, {})
            if not {"mean", "var"} <= set(stats) or any(
                np.shape(stats[k]) != shape for k in ("mean", "var")
            ):
                continue
        found.append(module)
    return tuple(found)


def _leaves_by_module(tree: PyTree) -> dict[str, dict[str, Any]]:
    modules: dict[str, dict[str, Any]] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if path:
            modules.setdefault(path_name(path[:-1]), {})[path_name(path[-1:])] = leaf
    return modules


def init_masks(params: PyTree, layers: Sequence[str]) -> Masks:
    """All-ones masks (ANP's initialization), f32[C] per BatchNorm layer."""
    modules = _leaves_by_module(params)
    return {layer: jnp.ones(np.shape(modules[layer]["scale"]), jnp.float32) for layer in layers}


def perturbed_params(
    params: PyTree,
    masks: Mapping[str, jax.Array],
    noise_scale: Mapping[str, jax.Array] | None = None,
    noise_bias: Mapping[str, jax.Array] | None = None,
) -> PyTree:
    """The parameters with ANP's masks and noise on the BatchNorm channels.

    For every layer in `masks`: scale γ → γ · (m + δ) and bias β → β · (1 + ξ); without noise
    (None), γ → γ · m and β unchanged. Every other leaf is returned as it is. Traceable.

    Args:
        params: the model's parameters.
        masks: BatchNorm module path → f32[C] mask m.
        noise_scale: path → f32[C] multiplicative noise δ on the scale, or None (zero).
        noise_bias: path → f32[C] multiplicative noise ξ on the bias, or None (zero).

    Returns:
        A pytree like `params`.
    """

    def leaf(path, p):
        module, name = path_name(path[:-1]), path_name(path[-1:])
        if module not in masks:
            return p
        if name == "scale":
            coeff = masks[module]
            if noise_scale is not None:
                coeff = coeff + noise_scale[module]
            return p * coeff.astype(p.dtype)
        if name == "bias" and noise_bias is not None:
            return p * (1.0 + noise_bias[module]).astype(p.dtype)
        return p

    return jax.tree_util.tree_map_with_path(leaf, params)


def _logits(model: nn.Module, mean, std, params, batch_stats, images) -> jax.Array:
    """f32[B, C] logits of uint8 images in inference mode (running BatchNorm statistics)."""
    x = augment_lib.normalize(images, mean, std)
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
    return logits.astype(jnp.float32)


# -- the mask optimization ------------------------------------------------------------------


class MaskOptimization(NamedTuple):
    """What `optimize_masks` returns.

    Attributes:
        masks: path → f32[C], the optimized masks, in [0, 1].
        clean_loss: f32[T] CE of the masked, unperturbed model per iteration.
        robust_loss: f32[T] CE of the perturbed model per iteration (0 when ε = 0).
    """

    masks: Masks
    clean_loss: jax.Array
    robust_loss: jax.Array


@dataclasses.dataclass(frozen=True)
class _MaskSettings:
    batch_size: int
    lr: float
    momentum: float
    eps: float
    noise_steps: int
    alpha: float
    augment: bool
    chunk: int


@functools.lru_cache(maxsize=32)
def _mask_program(model: nn.Module, mean: tuple, std: tuple, s: _MaskSettings):
    """The jitted chunk of `s.chunk` mask iterations (built once per model and settings)."""

    def iteration(carry, it, params, batch_stats, images, labels, key):
        masks, velocity = carry
        k_batch, k_aug, k_noise = jax.random.split(jax.random.fold_in(key, it), 3)
        # With replacement, like the authors' RandomSampler(replacement=True).
        rows = jax.random.randint(k_batch, (s.batch_size,), 0, images.shape[0])
        x, y = images[rows], labels[rows]
        if s.augment:
            x = augment_lib.augment(k_aug, x, crop_padding=4, flip=True)

        def ce(p):
            logits = _logits(model, mean, std, p, batch_stats, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        noise = None
        if s.eps > 0:
            keys = jax.random.split(k_noise, 2 * len(masks))
            names = sorted(masks)
            noise = (
                {n: _uniform(keys[2 * i], masks[n], s.eps) for i, n in enumerate(names)},
                {n: _uniform(keys[2 * i + 1], masks[n], s.eps) for i, n in enumerate(names)},
            )
            step = s.eps / s.noise_steps
            for _ in range(s.noise_steps):
                # Ascent on the loss: δ ← clip(δ + (ε / steps) · sign(∇δ CE), −ε, ε).
                grads = jax.grad(lambda nz: ce(perturbed_params(params, masks, *nz)))(noise)
                noise = jax.tree.map(
                    lambda n, g: jnp.clip(n + step * jnp.sign(g), -s.eps, s.eps), noise, grads
                )
            noise = jax.lax.stop_gradient(noise)

        def mask_loss(m):
            clean = ce(perturbed_params(params, m))
            robust = ce(perturbed_params(params, m, *noise)) if noise is not None else 0.0
            return s.alpha * clean + (1 - s.alpha) * robust, (clean, robust)

        (_, (clean, robust)), grads = jax.value_and_grad(mask_loss, has_aux=True)(masks)
        # PyTorch SGD momentum: v ← μ v + g; m ← m − lr v; then the projection onto [0, 1].
        velocity = jax.tree.map(lambda v, g: s.momentum * v + g, velocity, grads)
        masks = jax.tree.map(lambda m, v: jnp.clip(m - s.lr * v, 0.0, 1.0), masks, velocity)
        return (masks, velocity), jnp.stack([clean, jnp.asarray(robust, jnp.float32)])

    def chunk(masks, velocity, params, batch_stats, images, labels, key, start):
        TRACES["optimize_masks"] += 1
        body = functools.partial(
            iteration,
            params=params,
            batch_stats=batch_stats,
            images=images,
            labels=labels,
            key=key,
        )
        if s.chunk == 1:  # No loop: XLA:CPU runs convolutions in a loop body much slower.
            carry, losses = body((masks, velocity), start)
            return carry, losses[None]
        return jax.lax.scan(body, (masks, velocity), start + jnp.arange(s.chunk))

    return jax.jit(chunk)


def _uniform(key, like, eps):
    return jax.random.uniform(key, like.shape, jnp.float32, -eps, eps)


def optimize_masks(
    model: nn.Module,
    params: PyTree,
    batch_stats: PyTree,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    layers: Sequence[str] | None = None,
    iterations: int = 2000,
    batch_size: int = 128,
    lr: float = 0.2,
    momentum: float = 0.9,
    eps: float = 0.4,
    noise_steps: int = 1,
    alpha: float = 0.2,
    augment: bool = True,
    chunk: int = 1,
) -> MaskOptimization:
    """ANP's mask optimization (see the module docstring for the algorithm).

    Args:
        model: flax module returning `(logits, features)`, with a `train` flag.
        params: its parameters (any pruning mask already applied).
        batch_stats: its BatchNorm statistics (used, never updated).
        images: uint8[N, H, W, 3] the defender's tuning images (on the device).
        labels: int32[N] their labels.
        key: PRNG key of the batches, augmentation and noise.
        mean: normalization mean.
        std: normalization standard deviation.
        layers: the BatchNorm layers to mask (default: all, `bn_layers`).
        iterations: T, mask steps (paper: 2000).
        batch_size: images per iteration (paper: 128).
        lr: mask SGD learning rate (paper: 0.2).
        momentum: mask SGD momentum (paper: 0.9).
        eps: ε, the noise bound (paper: 0.4); 0 disables the perturbation.
        noise_steps: ascent steps on the noise per iteration (paper: 1), of size ε / steps.
        alpha: α, the clean loss's weight (paper: 0.2).
        augment: random crop (padding 4) and flip of each batch.
        chunk: iterations per compiled call (a `lax.scan` when > 1); rounded down to a
            divisor of `iterations` so every call has the same shape (one compile).

    Returns:
        The masks (each f32[C] in [0, 1]) and the per-iteration losses.
    """
    if layers is None:
        layers = bn_layers(params, batch_stats)
    if not layers:
        raise ValueError("the model has no BatchNorm layers: ANP masks BatchNorm channels")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    chunk = largest_divisor_at_most(iterations, max(1, chunk))
    settings = _MaskSettings(
        batch_size=batch_size,
        lr=float(lr),
        momentum=float(momentum),
        eps=float(eps),
        noise_steps=noise_steps,
        alpha=float(alpha),
        augment=bool(augment),
        chunk=chunk,
    )
    program = _mask_program(model, tuple(mean), tuple(std), settings)
    masks = init_masks(params, layers)
    velocity = jax.tree.map(jnp.zeros_like, masks)
    sharding = getattr(images, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        # The outputs come back replicated over the data's mesh; start there too, or the
        # second call would see a new input placement and trace again.
        replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        masks, velocity = jax.device_put((masks, velocity), replicated)
    losses = []
    for start in range(0, iterations, chunk):
        (masks, velocity), out = program(
            masks, velocity, params, batch_stats, images, labels, key, jnp.int32(start)
        )
        losses.append(out)
    losses = jnp.concatenate(losses)
    return MaskOptimization(masks=masks, clean_loss=losses[:, 0], robust_loss=losses[:, 1])


# -- the pruning candidates and their validation sweep --------------------------------------


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
def sweep_program(model: nn.Module, mean: tuple, std: tuple):
    """The jitted vectorized evaluation of pruning candidates on one batch of images.

    `program(params, batch_stats, keeps, images, labels, valid) -> int32[K]` correct counts
    per candidate: vmap over the K rows of `keeps` (path → f32[K, C]) of the inference
    forward with γ → γ · keep; `valid` (bool[B]) marks real images in a padded batch. Built
    once per model and normalization (its compile count is what the tests read).
    """

    def program(params, batch_stats, keeps, images, labels, valid):
        TRACES["sweep"] += 1

        def correct(keep):
            logits = _logits(model, mean, std, perturbed_params(params, keep), batch_stats, images)
            return jnp.sum((jnp.argmax(logits, -1) == labels) & valid)

        return jax.vmap(correct)(keeps)

    return jax.jit(program)


def sweep_accuracy(
    model: nn.Module,
    params: PyTree,
    batch_stats: PyTree,
    keeps: Mapping[str, jax.Array],
    images: np.ndarray | jax.Array,
    labels: np.ndarray | jax.Array,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
) -> np.ndarray:
    """Accuracy of every pruning candidate, in one vectorized program.

    Args:
        model: flax module returning `(logits, features)`.
        params: its parameters.
        batch_stats: its BatchNorm statistics.
        keeps: path → f32[K, C] candidate channel masks (`candidate_keeps`).
        images: uint8[N, H, W, 3] the validation images.
        labels: int[N] their labels.
        mean: normalization mean.
        std: normalization standard deviation.
        batch_size: images per call; the last batch is padded, so every call has one shape.

    Returns:
        f64[K] accuracy per candidate (NaN-free; N ≥ 1 required).
    """
    n = int(np.shape(labels)[0])
    if n < 1:
        raise ValueError("sweep_accuracy needs at least one validation image")
    program = sweep_program(model, tuple(mean), tuple(std))
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


# -- the repair -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class ANP:
    """ANP (Wu & Wang 2021): adversarial neuron masks on BatchNorm channels, then pruning.

    The plan's `details`: "prune_by"; "threshold" (or "rate" for `prune_by="count"`), the
    chosen grid value or None when nothing is pruned; "num_pruned", "pruned_per_layer"
    (BatchNorm path → count), "channels_per_layer", "num_channels"; "base_val_accuracy" (the
    unpruned model's) and "val_accuracy" (the returned model's); "candidates" (per grid value:
    "num_pruned", "val_accuracy", "within_budget"); "iterations", "clean_loss_last",
    "robust_loss_last"; "mask_values" (path → the optimized masks, for oracle figures).

    Attributes:
        steps: fine-tuning steps after pruning (0: ANP prunes without fine-tuning).
        lr: fine-tuning learning rate.
        momentum: fine-tuning SGD momentum.
        weight_decay: fine-tuning L2 coefficient added to the gradient.
        batch_size: images per mask iteration (paper: 128) and per fine-tuning step.
        cosine: cosine decay of the fine-tuning learning rate.
        iterations: mask iterations (paper: 2000).
        mask_lr: mask SGD learning rate (paper: 0.2).
        mask_momentum: mask SGD momentum (paper: 0.9).
        anp_eps: ε, bound of the multiplicative noise (paper: 0.4); 0 disables it.
        anp_steps: signed ascent steps on the noise per iteration (paper: 1).
        anp_alpha: α, weight of the clean loss against the perturbed one (paper: 0.2).
        augment: random crop and flip of each mask batch (the authors' training transform).
        prune_by: "threshold" (prune m ≤ t for t in `grid`) or "count" (prune the
            round(r · total) lowest masks for r in `grid`).
        grid: the candidates (default 0.0, 0.05, ..., 0.9; a single value, e.g. (0.2,),
            BackdoorBench's fixed threshold, is still checked against the budget).
        delta_prune: the validation-accuracy budget of the pruning, absolute, below the
            unpruned model's (jaxbd's default Δ).

    Raises:
        InvalidSettingError: for a value out of range.
    """

    steps: int = 0
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    cosine: bool = False
    iterations: int = 2000
    mask_lr: float = 0.2
    mask_momentum: float = 0.9
    anp_eps: float = 0.4
    anp_steps: int = 1
    anp_alpha: float = 0.2
    augment: bool = True
    prune_by: str = "threshold"
    grid: tuple[float, ...] = DEFAULT_GRID
    delta_prune: float = 0.02
    name: ClassVar[str] = "anp"

    def __post_init__(self):
        check_optimizer(self)
        require_int(self.iterations, "iterations", 1)
        require(0 < self.mask_lr < float("inf"), "mask_lr", "must be > 0", self.mask_lr)
        require(
            0 <= self.mask_momentum < 1, "mask_momentum", "must be in [0, 1)", self.mask_momentum
        )
        require(0 <= self.anp_eps < float("inf"), "anp_eps", "must be >= 0", self.anp_eps)
        require_int(self.anp_steps, "anp_steps", 1)
        require(0 <= self.anp_alpha <= 1, "anp_alpha", "must be in [0, 1]", self.anp_alpha)
        require(
            self.prune_by in ("threshold", "count"),
            "prune_by",
            "must be 'threshold' or 'count'",
            self.prune_by,
        )
        grid = tuple(self.grid)
        require(
            len(grid) >= 1 and all(0 <= g <= 1 for g in grid),
            "grid",
            "must be a non-empty sequence of values in [0, 1]",
            self.grid,
        )
        object.__setattr__(self, "grid", tuple(float(g) for g in grid))
        require(0 <= self.delta_prune <= 1, "delta_prune", "must be in [0, 1]", self.delta_prune)

    def plan(self, ctx: RepairContext, variables: Variables) -> TuningPlan:
        """Optimizes the masks on the tuning images, chooses the pruning on validation
        accuracy, and returns the pruned model (mask pytree) with the optional fine-tuning.

        Args:
            ctx: the repair context; `ctx.tune_data` is optimized on, `ctx.defender.val`
                decides the pruning (nothing else is read).
            variables: the backdoored model (its mask, if any, is kept and combined).

        Returns:
            The plan; `details` as described in the class docstring.
        """
        check_mask(variables.params, variables.mask)
        params = apply_mask(variables.params, variables.mask)
        batch_stats = variables.batch_stats
        trainer = ctx.trainer
        layers = bn_layers(params, batch_stats)

        # 1. The masks, on the defender's tuning images (already on the devices).
        result = optimize_masks(
            trainer.model,
            params,
            batch_stats,
            ctx.tune_data.images,
            ctx.tune_data.labels,
            jax.random.fold_in(ctx.key, _MASK_STREAM),
            mean=trainer.mean,
            std=trainer.std,
            layers=layers,
            iterations=self.iterations,
            batch_size=self.batch_size,
            lr=self.mask_lr,
            momentum=self.mask_momentum,
            eps=self.anp_eps,
            noise_steps=self.anp_steps,
            alpha=self.anp_alpha,
            augment=self.augment,
            chunk=trainer.steps_per_call,
        )

        # 2. Every candidate and the unpruned model on the validation images, in one program.
        keeps = candidate_keeps(result.masks, self.grid, self.prune_by)
        val = ctx.defender.val
        accuracies = sweep_accuracy(
            trainer.model,
            params,
            batch_stats,
            keeps,
            val.images,
            val.labels,
            mean=trainer.mean,
            std=trainer.std,
            batch_size=trainer.eval_batch_size,
        )
        base = float(accuracies[0])
        pruned_counts = [
            int(sum(np.sum(np.asarray(k[i + 1]) == 0) for k in keeps.values()))
            for i in range(len(self.grid))
        ]
        chosen = choose_candidate(
            [float(a) for a in accuracies[1:]], pruned_counts, base, self.delta_prune
        )
        keep = {n: k[chosen + 1] for n, k in keeps.items()}  # row 0 (nothing) when chosen = −1

        # 3. The pruned model: γ of the pruned channels zeroed through the mask pytree.
        mask = jax.tree.map(
            lambda m, c: jnp.asarray(m, jnp.float32) * c,
            variables.mask,
            pruning_mask(params, keep),
        )
        pruned = Variables(params=apply_mask(params, mask), batch_stats=batch_stats, mask=mask)
        key_name = "threshold" if self.prune_by == "threshold" else "rate"
        per_layer = {n: int(np.sum(np.asarray(k) == 0)) for n, k in keep.items()}
        details = {
            "prune_by": self.prune_by,
            key_name: None if chosen < 0 else self.grid[chosen],
            "num_pruned": int(sum(per_layer.values())),
            "pruned_per_layer": per_layer,
            "channels_per_layer": {n: int(k.shape[-1]) for n, k in keep.items()},
            "num_channels": int(sum(k.shape[-1] for k in keep.values())),
            "base_val_accuracy": base,
            "val_accuracy": float(accuracies[chosen + 1]),
            "candidates": [
                {
                    key_name: g,
                    "num_pruned": pruned_counts[i],
                    "val_accuracy": float(accuracies[i + 1]),
                    "within_budget": within_budget(
                        float(accuracies[i + 1]), base, self.delta_prune
                    ),
                }
                for i, g in enumerate(self.grid)
            ],
            "iterations": self.iterations,
            "clean_loss_last": float(result.clean_loss[-1]),
            "robust_loss_last": float(result.robust_loss[-1]),
            "mask_values": {n: np.asarray(m).tolist() for n, m in result.masks.items()},
        }

        def build(i: int) -> Variables:
            """Candidate i of the grid (its channels pruned through the mask pytree)."""
            row = {n: k[i + 1] for n, k in keeps.items()}
            m = jax.tree.map(
                lambda a, c: jnp.asarray(a, jnp.float32) * c,
                variables.mask,
                pruning_mask(params, row),
            )
            return Variables(params=apply_mask(params, m), batch_stats=batch_stats, mask=m)

        return TuningPlan(
            variables=pruned,
            data=ctx.tune_data,
            steps=self.steps,
            lr=self.lr,
            cosine=self.cosine,
            details=details,
            candidates=Candidates(labels=tuple(details["candidates"]), build=build),
        )
