"""Neural Cleanse (Wang et al. 2019, "Neural Cleanse: Identifying and Mitigating Backdoor
Attacks in Neural Networks"): reverse-engineer a trigger per label, flag outliers, unlearn.

The repair `NeuralCleanse` reverse-engineers every label's trigger on the defender's tuning
images (`jaxbd.defenses.neural_cleanse_reverse`), flags the labels whose mask norm is an
outlier below the median (`jaxbd.defenses.neural_cleanse_detect`), stamps each flagged
label's reversed trigger on a random 20% of the tuning images, keeps their true labels, and
fine-tunes on them (the paper's unlearning); when nothing is flagged it says so and returns
the model unchanged (0 steps). The defaults' provenance is in docs/defenses.md.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import ClassVar

import jax
import numpy as np

from jaxbd.defenses.base import RepairContext, TuningPlan, Variables
from jaxbd.defenses.finetune import check_optimizer, masked_classifier
from jaxbd.defenses.neural_cleanse_detect import (
    MAD_CONSISTENCY,
    NeuralCleanseDetectSettings,
    TriggerSearch,
    anomaly_index,
    flag_labels,
    neural_cleanse_score,
)
from jaxbd.defenses.neural_cleanse_reverse import ReversedTriggers, reverse_engineer, stamp_uint8
from jaxbd.settings import require, require_int
from jaxbd.types import jsonable

__all__ = [
    "MAD_CONSISTENCY",
    "NeuralCleanse",
    "NeuralCleanseDetectSettings",
    "ReversedTriggers",
    "TriggerSearch",
    "anomaly_index",
    "flag_labels",
    "neural_cleanse_score",
    "reverse_engineer",
    "stamp_uint8",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class NeuralCleanse(TriggerSearch):
    """Neural Cleanse: reverse-engineer every label's trigger, flag outliers, unlearn.

    The trigger search's settings are `TriggerSearch`'s (epochs, init_cost, attack_threshold,
    patience, cost_multiplier, the early stop, anomaly_threshold).

    Attributes:
        steps: fine-tuning (unlearning) SGD steps.
        lr: fine-tuning learning rate (constant unless `cosine`).
        momentum: SGD momentum.
        weight_decay: L2 coefficient added to the gradient (PyTorch's convention).
        batch_size: fine-tuning images per step.
        cosine: decay the fine-tuning learning rate to 0 over the steps.
        reverse_batch_size: reverse-engineering images per step (at most the tuning images).
        mask_lr: Adam's learning rate for the masks and patterns.
        unlearn_fraction: the fraction of the tuning images stamped with a flagged label's
            trigger (split among the flagged labels), keeping their true labels.

    Raises:
        InvalidSettingError: for a value out of range.
    """

    steps: int = 1000
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    cosine: bool = False
    reverse_batch_size: int = 128
    mask_lr: float = 0.1
    unlearn_fraction: float = 0.2
    name: ClassVar[str] = "neural_cleanse"
    # The trigger search and the unlearning read the model's logits only.
    model_needs: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        super().__post_init__()
        check_optimizer(self)
        require_int(self.reverse_batch_size, "reverse_batch_size", 1)
        require(self.mask_lr > 0, "mask_lr", "must be > 0", self.mask_lr)
        require(
            0 < self.unlearn_fraction <= 1,
            "unlearn_fraction",
            "must be in (0, 1]",
            self.unlearn_fraction,
        )

    def reverse(self, ctx: RepairContext, variables: Variables) -> ReversedTriggers:
        """Reverse-engineers every label's trigger on the defender's tuning images."""
        return self.search(
            masked_classifier(ctx.trainer, variables),
            ctx.tune_data.images,
            ctx.num_classes,
            key=jax.random.fold_in(ctx.key, zlib.crc32(b"neural_cleanse/reverse")),
            batch_size=self.reverse_batch_size,
            lr=self.mask_lr,
        )

    def plan(self, ctx: RepairContext, variables: Variables) -> TuningPlan:
        """Reverse-engineer, flag, and plan the unlearning fine-tune (0 steps if no flag)."""
        triggers = jax.device_get(self.reverse(ctx, variables))
        norms = np.asarray(triggers.norms)
        index = np.asarray(anomaly_index(norms))
        flagged = np.flatnonzero(np.asarray(flag_labels(norms, self.anomaly_threshold)))
        details = {
            "norms": norms,
            "anomaly_index": index,
            "flagged_labels": flagged,
            "attack_success": np.asarray(triggers.attack_success),
            "reached_threshold": np.asarray(triggers.reached),
        }
        if not len(flagged):
            details.update(
                unlearning_images=0,
                note="no label flagged (every anomaly index <= "
                f"{self.anomaly_threshold} or above the median): the model is returned unchanged",
            )
            return TuningPlan(
                variables=variables,
                data=ctx.tune_data,
                steps=0,
                lr=self.lr,
                cosine=self.cosine,
                details=jsonable(details),
            )
        tune = ctx.defender.tune
        images = np.array(tune.images, copy=True)
        n = len(images)
        count = min(n, max(1, round(self.unlearn_fraction * n)))
        pick_key = jax.random.fold_in(ctx.key, zlib.crc32(b"neural_cleanse/unlearn"))
        chosen = np.asarray(jax.random.permutation(pick_key, n))[:count]
        # Each flagged label's trigger on its share of the chosen images; true labels kept.
        for label, share in zip(flagged, np.array_split(chosen, len(flagged)), strict=True):
            images[share] = stamp_uint8(
                images[share], triggers.masks[label], triggers.patterns[label]
            )
        details["unlearning_images"] = count
        return TuningPlan(
            variables=variables,
            data=ctx.trainer.put(images, tune.labels),
            steps=self.steps,
            lr=self.lr,
            cosine=self.cosine,
            details=jsonable(details),
        )
