"""Pivotal Tuning with SLOL: fine-tune near a frozen copy of the backdoored model.

Lukas & Kerschbaum 2023, "Pick your Poison: Undetectability versus Robustness in Data
Poisoning Attacks" (Algorithm 3). The backdoored model is the *pivot* θ̃; the tuned model θ*
starts as a copy of it and minimizes, on each augmented batch of the defender's images,

    CE(f(x; θ*), y) + λ_S · SLOL(g(x; θ̃), g(x; θ*), y) + λ_P · mean((θ* − θ̃)²),

where g are the penultimate features and the mean runs over every parameter coordinate.
The pivot is frozen (the step's `extra` input behind `stop_gradient`, in inference mode).
With C_i the pivot's and Ĉ_i the tuned model's centroid of the features of class i, over
the classes present in the batch (`slol_loss`):

    SLOL = Σ_{i<j} [cos(C_i − C_j, Ĉ_i − Ĉ_j) + cos(Ĉ_i, Ĉ_j)],

minimized as written (the paper's algorithm). What each term does, the released code's
departure from it, and the defaults' provenance: docs/defenses.md.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax

from jaxbd.defenses.base import RepairContext, TuningPlan, Variables, copy_tree
from jaxbd.defenses.finetune import check_optimizer
from jaxbd.settings import require
from jaxbd.train import LossOutput, StepVariant

_EPS = 1e-8
"""Floor of a vector norm in a cosine: a zero vector (an absent class's centroid, two equal
centroids) gives cosine 0 and a finite gradient instead of 0/0."""


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cosine similarity along the last axis, eps-safe (see `_EPS`)."""

    def norm(v):
        # maximum() before sqrt: the gradient of sqrt at 0 is infinite, and 0·inf = NaN would
        # leak into the masked pairs' (zero-weight) gradients.
        return jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1), _EPS**2))

    return jnp.sum(a * b, axis=-1) / (norm(a) * norm(b))


def slol_loss(
    pivot_features: jax.Array,
    tuned_features: jax.Array,
    labels: jax.Array,
    num_classes: int,
) -> jax.Array:
    """SLOL, Algorithm 3 of Lukas & Kerschbaum 2023, over the classes present in the batch.

    `Σ_{i<j} [cos(C_i − C_j, Ĉ_i − Ĉ_j) + cos(Ĉ_i, Ĉ_j)]` over pairs of classes i < j that
    both occur in `labels`, where C_i is the mean pivot feature of class i and Ĉ_i the mean
    tuned feature. Minimized as written (docs/defenses.md explains the orientation).

    Fixed shapes throughout (absent classes are masked, not indexed away), so it jits once
    per batch shape; memory is O(C²·D) for the centroid differences.

    Args:
        pivot_features: f32[B, D], the frozen pivot's features of the batch.
        tuned_features: f32[B, D], the tuned model's features of the same batch.
        labels: i32[B]; an example whose label is outside [0, num_classes) (e.g. -1) counts
            for no class.
        num_classes: C (static).

    Returns:
        f32[], 0 when fewer than two classes are present.
    """
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # [B, C]; -1 → all zeros
    counts = jnp.sum(onehot, axis=0)  # [C]
    present = counts > 0

    def centroids(features):
        sums = onehot.T @ features.astype(jnp.float32)  # [C, D]
        return sums / jnp.maximum(counts, 1.0)[:, None]

    pivot, tuned = centroids(pivot_features), centroids(tuned_features)
    # [C, C, D] pairwise differences, formed explicitly rather than through Gram matrices:
    # ‖C_i − C_j‖² from inner products cancels badly in float32 when centroids are close.
    between = _cosine(pivot[:, None] - pivot[None, :], tuned[:, None] - tuned[None, :])
    centroid = _cosine(tuned[:, None], tuned[None, :])
    pairs = present[:, None] & present[None, :] & jnp.triu(jnp.ones_like(between, bool), k=1)
    return jnp.sum(jnp.where(pairs, between + centroid, 0.0))


def param_distance(params, pivot_params) -> jax.Array:
    """f32[], the mean over every parameter coordinate of (θ* − θ̃)²."""
    leaves = jax.tree.leaves(jax.tree.map(lambda p, q: jnp.square(p - q), params, pivot_params))
    total = sum(x.size for x in leaves)
    return sum(jnp.sum(x, dtype=jnp.float32) for x in leaves) / total


@functools.cache
def _variant(slol_weight: float, param_weight: float, num_classes: int) -> StepVariant:
    """The step variant of these hyper-parameters: one object per value, so every tuning
    chunk (and every equal repair) reuses one compiled step."""

    def loss_fn(model, params, batch_stats, x, labels, weights, extra):
        # The pivot is data, not a parameter: stop_gradient makes "no gradient flows into it"
        # hold whatever a caller differentiates.
        pivot = jax.lax.stop_gradient(extra)
        (logits, features), updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        _, pivot_features = model.apply(pivot, x, train=False)
        ce = jnp.mean(weights * optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        # A zero-weight example is excluded from the batch; it counts for no class's centroid.
        slol = slol_loss(pivot_features, features, jnp.where(weights > 0, labels, -1), num_classes)
        distance = param_distance(params, pivot["params"])
        loss = ce + slol_weight * slol + param_weight * distance
        terms = {"ce": ce, "slol": slol, "param_distance": distance}
        return LossOutput(loss, logits, updates.get("batch_stats", batch_stats), terms)

    return StepVariant(loss_fn=loss_fn)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PivotalTuning:
    """Pivotal Tuning with SLOL (Lukas & Kerschbaum 2023, Algorithm 3).

    Attributes:
        steps: SGD steps.
        lr: learning rate (constant unless `cosine`).
        momentum: SGD momentum.
        weight_decay: L2 coefficient added to the gradient (PyTorch's convention); the
            paper uses none, the distance to the pivot being the regularizer.
        batch_size: images per step.
        slol_weight: λ_S, the weight of SLOL.
        param_weight: λ_P, the weight of the mean squared distance to the pivot's parameters.
        cosine: decay the learning rate to 0 over the steps.

    Raises:
        InvalidSettingError: for a value out of range.
    """

    steps: int = 2000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
    slol_weight: float = 0.05
    param_weight: float = 20000.0
    cosine: bool = False
    name: ClassVar[str] = "pivotal_tuning"
    # SLOL reads the penultimate features of the tuned model and of the pivot.
    model_needs: ClassVar[tuple[str, ...]] = ("features",)

    def __post_init__(self):
        check_optimizer(self)
        require(self.slol_weight >= 0, "slol_weight", "must be >= 0", self.slol_weight)
        require(self.param_weight >= 0, "param_weight", "must be >= 0", self.param_weight)

    def variant(self, num_classes: int) -> StepVariant:
        """The train-step variant (the same object on every call with the same C)."""
        return _variant(float(self.slol_weight), float(self.param_weight), int(num_classes))

    def plan(self, ctx: RepairContext, variables: Variables) -> TuningPlan:
        """Tune a copy of the model with the frozen pivot (the model as given) as `extra`."""
        # The pivot is the model as tuning starts it: pruned coordinates are zero in θ* from
        # the first step, so they are zero in θ̃ too and add nothing to the distance term.
        pivot_params = jax.tree.map(lambda p, m: p * m, variables.params, variables.mask)
        pivot = {"params": copy_tree(pivot_params), "batch_stats": copy_tree(variables.batch_stats)}
        return TuningPlan(
            variables=variables,
            data=ctx.tune_data,
            steps=self.steps,
            lr=self.lr,
            cosine=self.cosine,
            variant=self.variant(ctx.num_classes),
            extra=pivot,
            details={"slol_weight": self.slol_weight, "param_weight": self.param_weight},
        )
