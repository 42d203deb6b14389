"""ANP: prune the BatchNorm channels whose loss is most sensitive to adversarial perturbation.

Wu & Wang 2021, "Adversarial Neuron Pruning Purifies Backdoored Deep Models" (NeurIPS): a
backdoored network, its neurons slightly perturbed, falls into predicting the target, so the
backdoor's neurons are the sensitive ones. The repair `ANP` learns a mask per BatchNorm
channel under the worst bounded perturbation (`jaxbd.defenses.anp_masks`), prunes the
channels whose mask falls low, choosing the threshold on the defender's validation images
(`jaxbd.defenses.anp_sweep`), and optionally fine-tunes. Defaults are the paper's CIFAR-10
settings; the algorithm, the defaults' provenance and the differences from the authors' code
and from BackdoorBench are in docs/defenses.md.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.defenses.anp_masks import (
    TRACES,
    MaskOptimization,
    Masks,
    bn_layers,
    init_masks,
    optimize_masks,
    perturbed_params,
)
from jaxbd.defenses.anp_sweep import (
    DEFAULT_GRID,
    candidate_keeps,
    choose_candidate,
    pruning_mask,
    sweep_accuracy,
)
from jaxbd.defenses.base import Candidates, RepairContext, TuningPlan, Variables
from jaxbd.defenses.curve import within_budget
from jaxbd.defenses.finetune import check_optimizer, engine_classifier
from jaxbd.prune.masks import apply_mask, check_mask
from jaxbd.settings import require, require_int

__all__ = [
    "ANP",
    "DEFAULT_GRID",
    "TRACES",
    "MaskOptimization",
    "Masks",
    "bn_layers",
    "candidate_keeps",
    "choose_candidate",
    "init_masks",
    "optimize_masks",
    "perturbed_params",
    "pruning_mask",
    "sweep_accuracy",
]

# fold_in tag of the mask-optimization stream (draws batches, augmentation and noise).
_MASK_STREAM = 0x414E50


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
    # It masks and perturbs the BatchNorm layers' scale and shift.
    model_needs: ClassVar[tuple[str, ...]] = ("batchnorm",)

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
        classifier = engine_classifier(trainer, params, batch_stats, variables.mask)
        result = optimize_masks(
            classifier,
            ctx.tune_data.images,
            ctx.tune_data.labels,
            jax.random.fold_in(ctx.key, _MASK_STREAM),
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
            classifier, keeps, val.images, val.labels, batch_size=trainer.eval_batch_size
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
