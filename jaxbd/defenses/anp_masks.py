"""ANP's neuron masks: the perturbed BatchNorm parameters and the jitted mask optimization.

Wu & Wang 2021 learn a mask m ∈ [0, 1] per BatchNorm channel that keeps clean accuracy under
the worst bounded multiplicative perturbation of the neurons: with scale γ, shift β, noises
δ, ξ ∈ [−ε, ε], the clean network uses γ·m and the perturbed one γ·(m + δ), β·(1 + ξ)
(`perturbed_params`, a transformation of the parameter pytree, so any flax model with
BatchNorm works). Each iteration draws a batch with replacement, takes `noise_steps` signed
ascent steps on the noise, then one SGD step (PyTorch's momentum convention) on
α·CE(clean) + (1 − α)·CE(perturbed) and clips the masks to [0, 1]. BatchNorm runs in
inference mode. All iterations run in one compiled function (`optimize_masks`). The
mapping to the authors' code is in docs/defenses.md.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbd.data import augment as augment_lib
from jaxbd.models.classifier import Classifier
from jaxbd.prune.masks import path_name
from jaxbd.train.epoch_order import largest_divisor_at_most
from jaxbd.types import PyTree

Masks = dict[str, jax.Array]
"""One f32[C] array per BatchNorm layer, keyed by the layer's "/"-joined module path."""

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
    """f32[B, C] logits of uint8 images in inference mode (running BatchNorm statistics);
    `model` is a `Classifier.engine_model()`, `(mean, std)` static tuples."""
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
    classifier: Classifier,
    images: jax.Array,
    labels: jax.Array,
    key: jax.Array,
    *,
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
    """ANP's mask optimization (the algorithm: the module docstring, docs/defenses.md).

    Args:
        classifier: the model (any pruning mask already applied to its parameters; its
            BatchNorm statistics are used, never updated; normalization inside).
        images: uint8[N, H, W, 3] the defender's tuning images (on the device).
        labels: int32[N] their labels.
        key: PRNG key of the batches, augmentation and noise.
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
    params, batch_stats = classifier.params, classifier.batch_stats
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
    program = _mask_program(classifier.engine_model(), classifier.mean, classifier.std, settings)
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
