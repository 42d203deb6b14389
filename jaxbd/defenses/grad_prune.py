"""Grad-Prune: prune the conv filters the unlearning gradient points at, then fine-tune.

Dunnett, Arablouei, Miller, Dedeoglu and Abuadbba 2024, "Unlearning backdoor attacks through
gradient-based model pruning". The defender knows the trigger: it stamps it on its own clean
images, keeps their true labels, and prunes, one filter per round, the filter with the
largest mean |gradient| of that unlearning loss (`jaxbd.defenses.grad_prune_scores`); the
filter's kernel slice and its own BatchNorm's scale and shift are masked (`pruning_mask`).
Rounds stop on validation accuracy, on a patience without a lower validation unlearning loss,
or at a cap (`RoundTracker`); the best round is fine-tuned on clean and
triggered-with-true-label pairs through the shared loop. `variant="reference"` reproduces two
quirks of the released code (`jaxbd.defenses.grad_prune_reference`). The rounds, the mapping
of the reference's early stopping onto the shared loop and the defaults' provenance are in
docs/defenses.md. Decisions read the defender's validation images only.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.defenses.base import RepairContext, TuningPlan, Variables
from jaxbd.defenses.curve import within_budget
from jaxbd.defenses.finetune import check_optimizer, engine_classifier
from jaxbd.defenses.grad_prune_reference import (
    next_tensor,
    parameter_order,
    reference_mask,
    round_order,
)
from jaxbd.defenses.grad_prune_scores import (
    TRACES,
    Path,
    _programs,
    batch_rows,
    choose_filter,
    filter_scores,
    flat_offsets,
    keep_vector,
    programs_for,
    unflatten_filter,
    unlearning_gradients,
)
from jaxbd.prune.channels import ConvBN, conv_bn_pairs, filter_mask
from jaxbd.prune.masks import apply_mask, check_mask
from jaxbd.settings import require, require_int
from jaxbd.types import PyTree

__all__ = [
    "TRACES",
    "VARIANTS",
    "GradPrune",
    "RoundTracker",
    "_programs",
    "batch_rows",
    "choose_filter",
    "filter_scores",
    "flat_offsets",
    "keep_vector",
    "next_tensor",
    "parameter_order",
    "programs_for",
    "pruning_mask",
    "unflatten_filter",
    "unlearning_gradients",
]

VARIANTS = ("standard", "reference")

# fold_in tag of the trigger's randomness (e.g. random positions); `tune` uses tags 1 and 2
# of the same key, the reference variant's batch order its own (`grad_prune_reference`).
_TRIGGER_STREAM = 0x4750


def pruning_mask(
    params: PyTree,
    pairs: Sequence[ConvBN],
    pruned: Sequence[tuple[Path, int]],
    *,
    variant: str = "standard",
    order: Sequence[Path] | None = None,
) -> tuple[PyTree, list[dict[str, Any]]]:
    """The mask that removes the pruned filters.

    Args:
        params: the model's parameters (only their structure and shapes are read).
        pairs: the conv → own BatchNorm map (`conv_bn_pairs`).
        pruned: (conv path, filter index) pairs, in pruning order.
        variant: "standard": each filter's kernel slice (and conv bias), its own BN's scale
            and shift (`filter_mask`). "reference": the kernel slice and slice k of the
            tensor after the kernel in `order` (its last axis), as the reference code does.
        order: the parameter order (`parameter_order`); required for "reference".

    Returns:
        (a float32 0/1 pytree like `params`, per pruned filter what else was zeroed:
        {"tensor": "/"-joined path or None, "in_range": bool} for "reference", {"bn":
        its own BN's path or None} for "standard").

    Raises:
        ValueError: for an unknown variant, or "reference" without `order`.
    """
    by_conv = {p.conv: p for p in pairs}
    if variant == "standard":
        grouped: dict[Path, list[int]] = {}
        for conv, k in pruned:
            grouped.setdefault(tuple(conv), []).append(int(k))
        mask = jax.tree.map(np.asarray, filter_mask(params, pairs, grouped))
        hits = [
            {"bn": None if by_conv[tuple(c)].bn is None else "/".join(by_conv[tuple(c)].bn)}
            for c, _ in pruned
        ]
        return mask, hits
    if variant != "reference":
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if order is None:
        raise ValueError('variant="reference" needs the parameter order (parameter_order)')
    return reference_mask(params, pruned, order)


@dataclasses.dataclass
class RoundTracker:
    """The stopping rule and the best round (the rounds are described in docs/defenses.md).

    Round 0 is the unpruned model. After each round, `update` records its validation
    accuracy and unlearning loss; a round is the new best when its loss is lower than the
    best so far and its accuracy is within α of round 0's.

    Attributes:
        base_accuracy: round 0's validation accuracy.
        base_loss: round 0's validation unlearning loss.
        alpha: the accuracy budget, absolute.
        patience: rounds in a row without a new best before stopping.
        max_rounds: the most rounds.
        best_round: the best round so far (0: the unpruned model).
        best_loss: its loss.
        rounds: rounds recorded.
        since_best: rounds since the best one.
        stop_reason: None while running; "alpha", "patience", "max_rounds" or "no_filters".
    """

    base_accuracy: float
    base_loss: float
    alpha: float
    patience: int
    max_rounds: int
    best_round: int = 0
    best_loss: float = math.inf
    rounds: int = 0
    since_best: int = 0
    stop_reason: str | None = None

    def __post_init__(self):
        self.best_loss = self.base_loss
        if self.max_rounds < 1:
            self.stop_reason = "max_rounds"

    def update(self, accuracy: float, loss: float) -> bool:
        """Records the next round; returns whether it is the new best."""
        if self.stop_reason is not None:
            raise RuntimeError(f"the rounds have stopped ({self.stop_reason})")
        self.rounds += 1
        within = within_budget(accuracy, self.base_accuracy, self.alpha)
        best = within and loss < self.best_loss
        if best:
            self.best_round, self.best_loss, self.since_best = self.rounds, loss, 0
        else:
            self.since_best += 1
        if not within:
            self.stop_reason = "alpha"
        elif self.since_best >= self.patience:
            self.stop_reason = "patience"
        elif self.rounds >= self.max_rounds:
            self.stop_reason = "max_rounds"
        return best


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradPrune:
    """Grad-Prune (Dunnett et al. 2024): prune filters along the unlearning gradient, then
    fine-tune on clean + triggered-with-true-label pairs. Assumes trigger knowledge
    (`needs_trigger`); the paper's data is spc = 100 (90 tuning / 10 validation per class).

    The plan's `details`: "variant", "alpha", "prune_patience", "max_rounds"; "rounds" (run),
    "best_round" (0: nothing pruned), "stop_reason" ("alpha", "patience", "max_rounds" or
    "no_filters"); "base_val_accuracy" and "base_val_unlearning_loss" (the unpruned model's),
    "best_val_unlearning_loss"; "num_filters" (all convs' filters), "num_pruned" and
    "pruning_rate" (of the returned model), "pruned_per_layer" (conv name -> count);
    "filters_pruned" (of the returned model: "conv", "filter", "round"); "round_log" (every
    round run: "round", "conv", "filter", "score" (mean |g|), "tune_unlearning_loss" (before
    that round's pruning), "val_accuracy", "val_unlearning_loss" (after it), and "bn" (its own
    BatchNorm, standard) or "tensor"/"in_range" (what the reference zeroed besides the
    kernel)); "tuning_examples" (2T).

    Attributes:
        steps: fine-tuning SGD steps after pruning (a cap; docs/defenses.md maps the
            reference's early stopping onto the shared loop).
        lr: fine-tuning learning rate (the paper's code: 1e-3).
        momentum: SGD momentum (0.9).
        weight_decay: L2 coefficient added to the gradient (5e-4).
        batch_size: examples per fine-tuning step, and per gradient batch when pruning (128).
        cosine: decay the learning rate to 0 over the steps (the paper's code: constant).
        alpha: pruning stops once validation accuracy falls more than this (absolute) below
            the unpruned model's (0.1).
        prune_patience: pruning stops after this many rounds without a lower validation
            unlearning loss (10).
        max_rounds: the most pruning rounds (200; the paper has no cap).
        variant: "standard", or "reference" for the released code's two quirks
            (`jaxbd.defenses.grad_prune_reference`).

    Raises:
        InvalidSettingError: for a value out of range.
    """

    # The defender must know the trigger: the pipeline passes the attack's test transform as
    # `RepairContext.trigger` only to a repair that declares this.
    needs_trigger: ClassVar[bool] = True

    steps: int = 1000
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    cosine: bool = False
    alpha: float = 0.1
    prune_patience: int = 10
    max_rounds: int = 200
    variant: str = "standard"
    name: ClassVar[str] = "grad_prune"
    # It prunes conv filters, with their own BatchNorm where they have one.
    model_needs: ClassVar[tuple[str, ...]] = ("conv_bn",)

    def __post_init__(self):
        check_optimizer(self)
        require(0 <= self.alpha <= 1, "alpha", "must be in [0, 1]", self.alpha)
        require_int(self.prune_patience, "prune_patience", 1)
        require_int(self.max_rounds, "max_rounds", 0)
        require(self.variant in VARIANTS, "variant", f"must be one of {VARIANTS}", self.variant)

    def plan(self, ctx: RepairContext, variables: Variables) -> TuningPlan:
        """Prunes filter by filter along the unlearning gradient, keeps the best round on
        validation, and plans the fine-tuning on clean + triggered-with-true-label pairs.

        Args:
            ctx: the repair context; `ctx.trigger` (the attack's test-time transform,
                `(key, uint8[N, H, W, 3], int32[N]) -> (images, labels)`; its labels are
                ignored) triggers the defender's images, `ctx.defender.tune` gives the
                gradients, `ctx.defender.val` and `ctx.validate` the decisions.
            variables: the backdoored model (its mask, if any, is kept and combined).

        Returns:
            The plan: the best round's model, the mixed tuning data, and `details` (see the
            class docstring).

        Raises:
            ValueError: without `ctx.trigger`, without tuning or validation images, or if the
                trigger returns images of another shape or dtype.
        """
        trigger = getattr(ctx, "trigger", None)
        if trigger is None:
            raise ValueError(
                "grad_prune assumes the defender knows the trigger, but the context has none "
                "(RepairContext.trigger): grant it with config.defender.trigger_knowledge=True"
            )
        tune_set, val_set = ctx.defender.tune, ctx.defender.val
        if len(tune_set) < 1 or len(val_set) < 1 or ctx.validate is None:
            raise ValueError("grad_prune needs the defender's tuning and validation images")
        check_mask(variables.params, variables.mask)
        base_mask = jax.tree.map(lambda m: np.asarray(m, np.float32), variables.mask)
        trainer = ctx.trainer
        put = trainer.replicate
        # Everything on the mesh once, so the programs' inputs keep one placement round after
        # round (a new placement would compile again).
        params = put(apply_mask(variables.params, variables.mask))
        batch_stats = put(variables.batch_stats)
        model = trainer.model
        image_shape = tuple(np.shape(tune_set.images)[1:])
        pairs = conv_bn_pairs(model, params, image_shape)
        convs = tuple(p.conv for p in pairs)
        order = parameter_order(model, image_shape) if self.variant == "reference" else None
        classifier = engine_classifier(trainer, params, batch_stats)
        programs = programs_for(classifier, convs)

        # 1. The defender's triggered copies (true labels kept), tuning and validation at once.
        n_tune = len(tune_set)
        triggered = _trigger(
            trigger,
            jax.random.fold_in(ctx.key, _TRIGGER_STREAM),
            np.concatenate([tune_set.images, val_set.images]),
            np.concatenate([tune_set.labels, val_set.labels]),
        )
        trig_tune, trig_val = triggered[:n_tune], triggered[n_tune:]
        tune_images, tune_labels = put(trig_tune), put(np.asarray(tune_set.labels, np.int32))
        val_images, val_labels = put(trig_val), put(np.asarray(val_set.labels, np.int32))
        b = min(self.batch_size, n_tune)
        val_rows, val_weights = map(put, batch_rows(np.arange(len(val_set)), b))
        canonical = tuple(map(put, batch_rows(np.arange(n_tune), b)))

        def unlearning_loss(mask, stats) -> float:
            acc = jax.device_put(jnp.zeros((), jnp.float32), val_images.sharding)
            for i in range(int(val_rows.shape[0])):
                acc = programs.loss(
                    acc, params, stats, mask, val_images, val_labels, val_weights, val_rows, i
                )
            return float(acc) / len(val_set)

        def evaluate(mask, stats) -> tuple[float, float]:
            accuracy = float(ctx.validate(apply_mask(params, mask), stats))
            return accuracy, unlearning_loss(mask, stats)

        # 2. The rounds.
        mask = put(base_mask)  # the current mask on the devices (data for every program)
        base_accuracy, base_loss = evaluate(mask, batch_stats)
        tracker = RoundTracker(
            base_accuracy, base_loss, self.alpha, self.prune_patience, self.max_rounds
        )
        pruned: list[tuple[Path, int]] = []
        records: list[dict[str, Any]] = []
        best = (mask, batch_stats)
        stats = batch_stats
        num_filters = int(flat_offsets(pairs)[-1])
        while tracker.stop_reason is None:
            if len(pruned) == num_filters:
                tracker.stop_reason = "no_filters"
                break
            r = tracker.rounds + 1
            if self.variant == "reference":
                rows, weights = map(put, batch_rows(round_order(ctx.key, r, n_tune), b))
            else:
                rows, weights = canonical
            sums, loss_sum, stats = unlearning_gradients(
                classifier.replace(batch_stats=stats, mask=mask),
                convs,
                tune_images,
                tune_labels,
                rows,
                weights,
                first_batch_train=self.variant == "reference",
            )
            keep = put(keep_vector(pairs, pruned))
            index, score = programs.choose(sums, jnp.float32(n_tune), keep)
            conv_i, k = unflatten_filter(pairs, int(index))
            pruned.append((convs[conv_i], k))
            round_mask, hits = pruning_mask(
                params, pairs, pruned, variant=self.variant, order=order
            )
            mask = put(jax.tree.map(np.multiply, base_mask, round_mask))
            accuracy, loss = evaluate(mask, stats)
            records.append(
                {
                    "round": r,
                    "conv": pairs[conv_i].name,
                    "filter": k,
                    "score": float(score),
                    "tune_unlearning_loss": float(loss_sum) / n_tune,
                    "val_accuracy": accuracy,
                    "val_unlearning_loss": loss,
                    **hits[-1],
                }
            )
            if tracker.update(accuracy, loss):
                best = (mask, stats)

        # 3. The best round's model, and the fine-tuning data: clean + triggered, true labels.
        mask, best_stats = best
        result = Variables(params=apply_mask(params, mask), batch_stats=best_stats, mask=mask)
        data = trainer.put(
            np.concatenate([tune_set.images, trig_tune]),
            np.concatenate([tune_set.labels, tune_set.labels]),
        )
        kept = [rec for rec in records if rec["round"] <= tracker.best_round]
        per_layer = collections.Counter(rec["conv"] for rec in kept)
        details = {
            "variant": self.variant,
            "alpha": self.alpha,
            "prune_patience": self.prune_patience,
            "max_rounds": self.max_rounds,
            "rounds": tracker.rounds,
            "best_round": tracker.best_round,
            "stop_reason": tracker.stop_reason,
            "base_val_accuracy": base_accuracy,
            "base_val_unlearning_loss": base_loss,
            "best_val_unlearning_loss": tracker.best_loss,
            "num_filters": num_filters,
            "num_pruned": len(kept),
            "pruning_rate": len(kept) / num_filters if num_filters else 0.0,
            "pruned_per_layer": {p.name: per_layer.get(p.name, 0) for p in pairs},
            "filters_pruned": [
                {"conv": rec["conv"], "filter": rec["filter"], "round": rec["round"]}
                for rec in kept
            ],
            "round_log": records,
            "tuning_examples": 2 * n_tune,
        }
        return TuningPlan(
            variables=result,
            data=data,
            steps=self.steps,
            lr=self.lr,
            cosine=self.cosine,
            details=details,
        )


def _trigger(trigger: Callable, key: jax.Array, images: np.ndarray, labels: np.ndarray):
    """uint8[N, H, W, 3] triggered copies of host images (one jitted call); the transform's
    labels (the attacker's) are discarded: the defender keeps the true ones."""
    out, _ = jax.jit(trigger)(key, jnp.asarray(images), jnp.asarray(labels, jnp.int32))
    out = np.asarray(jax.device_get(out))
    if out.dtype != np.uint8 or out.shape != images.shape:
        raise ValueError(
            f"the trigger returned images of dtype {out.dtype} and shape {out.shape}; "
            f"expected uint8 {images.shape}"
        )
    return out
