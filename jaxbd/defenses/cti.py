"""Model-level backdoor detection: Calibrated Trigger Inversion (CTI).

Lukas & Kerschbaum 2023, "Pick your Poison: Undetectability versus Robustness in Data
Poisoning Attacks". Plain trigger inversion finds a universal perturbation for almost any
class of almost any model; CTI calibrates it against a *repaired* copy: (1) repair a copy
with Pivotal Tuning on the defender's tuning images; (2) for every class c optimize one
additive full-image δ_c on the tuning images not of class c, sending them to c on the
examined model while the repaired one keeps their true labels (`invert_triggers`); (3) score
c by δ_c's success on the examined model minus on the repaired one, on the defender's
held-out images (`cti_scores`). The model's score is the maximum over classes.
`calibrated_trigger_inversion` runs it all with a `RepairContext`. On small models Pivotal
Tuning's repair fails the calibration and a gentle weight-decay fine-tuning
(`slol_weight=0, param_weight=0, repair_weight_decay=0.5`, a small step) serves instead;
that, the defaults' provenance and the differences from the reference code are in
docs/detection.md. Neural Cleanse's detector is `jaxbd.defenses.neural_cleanse_detect`.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import ClassVar

import jax
import numpy as np

from jaxbd.defenses.base import RepairContext, Variables
from jaxbd.defenses.cti_inversion import (
    CTIScores,
    LogitsFn,
    _invert_program,
    _score_program,
    cti_scores,
    float_logits_fn,
    invert_triggers,
)
from jaxbd.defenses.finetune import masked_classifier
from jaxbd.defenses.neural_cleanse_detect import (
    NeuralCleanseDetectSettings,
    neural_cleanse_score,
)
from jaxbd.defenses.pivotal_tuning import PivotalTuning
from jaxbd.defenses.tuning import TuneResult, tune
from jaxbd.settings import require, require_int

__all__ = [
    "CTIResult",
    "CTIScores",
    "CTISettings",
    "LogitsFn",
    "NeuralCleanseDetectSettings",
    "_invert_program",
    "_score_program",
    "calibrated_trigger_inversion",
    "cti_scores",
    "float_logits_fn",
    "invert_triggers",
    "neural_cleanse_score",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class CTISettings:
    """Calibrated Trigger Inversion's hyper-parameters (`config.detector.cti`).

    Attributes:
        steps: Adam steps of every class's δ (Pick your Poison: 50).
        lr: Adam's learning rate (0.01).
        b1: Adam's β₁ (0.5).
        b2: Adam's β₂ (0.9).
        init_scale: δ starts as U(0, 1)·init_scale (0.01).
        repaired_weight: weight of the repaired model's true-label cross-entropy (0.5).
        norm_weight: weight of an ℓ₂ penalty ‖δ‖₂ (0: none, the paper's default).
        batch_size: tuning images per inversion step, shared by every class (at most all).
        eval_batch_size: held-out images per scoring block (each block runs C·block images).
        repair_steps: Pivotal Tuning's step budget for the reference model.
        repair_lr: its SGD learning rate.
        repair_momentum: its SGD momentum.
        repair_weight_decay: its weight decay.
        repair_batch_size: its batch size (at most the defender's tuning images).
        slol_weight: λ_S.
        param_weight: λ_P.
        repair_eval_every: steps between the repair's validation rows.
        repair_delta: the repair's Δ budget on validation accuracy (absolute).
        repair_patience: rows out of the budget before the repair stops.
    """

    steps: int = 50
    lr: float = 0.01
    b1: float = 0.5
    b2: float = 0.9
    init_scale: float = 0.01
    repaired_weight: float = 0.5
    norm_weight: float = 0.0
    batch_size: int = 128
    eval_batch_size: int = 256
    repair_steps: int = 2000
    repair_lr: float = 0.01
    repair_momentum: float = 0.9
    repair_weight_decay: float = 0.0
    repair_batch_size: int = 128
    slol_weight: float = 0.05
    param_weight: float = 20000.0
    repair_eval_every: int = 50
    repair_delta: float = 0.02
    repair_patience: int = 3
    # The needs of its reference repair, Pivotal Tuning (SLOL reads the features).
    model_needs: ClassVar[tuple[str, ...]] = ("features",)

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_batch_size", "repair_batch_size"):
            value = getattr(self, name)
            require_int(value, name, 1)
        for name in ("repair_steps",):
            value = getattr(self, name)
            require_int(value, name, 0)
        for name in ("repair_eval_every", "repair_patience"):
            value = getattr(self, name)
            require_int(value, name, 1)
        require(self.lr > 0, "lr", "must be > 0", self.lr)
        require(self.repair_lr > 0, "repair_lr", "must be > 0", self.repair_lr)
        for name in ("b1", "b2", "repair_momentum"):
            value = getattr(self, name)
            require(0 <= value < 1, name, "must be in [0, 1)", value)
        for name in (
            "init_scale",
            "repaired_weight",
            "norm_weight",
            "repair_weight_decay",
            "slol_weight",
            "param_weight",
            "repair_delta",
        ):
            value = getattr(self, name)
            require(value >= 0, name, "must be >= 0", value)


@dataclasses.dataclass(frozen=True)
class CTIResult:
    """What `calibrated_trigger_inversion` found.

    Attributes:
        score: the model's score, max_c score_c.
        target: the argmax class (the suspected backdoor target).
        scores: the per-class successes and scores on the held-out images.
        deltas: float32[C, H, W, 3] the inverted perturbations.
        losses: float32[C, steps] the inversion's loss per class and step.
        repaired: the repaired reference model.
        repair: the repair's tuning result (its curve, the returned step).
    """

    score: float
    target: int
    scores: CTIScores
    deltas: np.ndarray
    losses: np.ndarray
    repaired: Variables
    repair: TuneResult


def calibrated_trigger_inversion(
    ctx: RepairContext, variables: Variables, settings: CTISettings | None = None
) -> CTIResult:
    """Calibrated Trigger Inversion (Lukas & Kerschbaum 2023) of one model.

    Args:
        ctx: the repair context: its trainer must carry the repair's optimizer
            (`repair_momentum`, `repair_weight_decay`) and batch size; its defender's tuning
            images drive the repair and the inversion, its held-out images (`validate`, the
            scores) are the only ones judged.
        variables: the examined model (its mask applied).
        settings: the hyper-parameters (default `CTISettings()`).

    Returns:
        The model's score, the per-class scores, the perturbations and the repaired model.
    """
    s = settings or CTISettings()
    trainer = ctx.trainer
    repair = PivotalTuning(
        steps=s.repair_steps,
        lr=s.repair_lr,
        momentum=s.repair_momentum,
        weight_decay=s.repair_weight_decay,
        batch_size=s.repair_batch_size,
        slol_weight=s.slol_weight,
        param_weight=s.param_weight,
    )
    result = tune(
        ctx,
        repair.plan(ctx, variables),
        eval_every=s.repair_eval_every,
        delta=s.repair_delta,
        patience=s.repair_patience,
        desc="cti/pivotal_tuning",
    )

    poisoned_fn = float_logits_fn(masked_classifier(trainer, variables))
    repaired_fn = float_logits_fn(masked_classifier(trainer, result.variables))
    d = ctx.defender
    deltas, losses = invert_triggers(
        poisoned_fn,
        repaired_fn,
        d.tune.images,
        d.tune.labels,
        ctx.num_classes,
        key=jax.random.fold_in(ctx.key, zlib.crc32(b"cti/invert")),
        steps=s.steps,
        lr=s.lr,
        b1=s.b1,
        b2=s.b2,
        init_scale=s.init_scale,
        repaired_weight=s.repaired_weight,
        norm_weight=s.norm_weight,
        batch_size=s.batch_size,
    )
    scores = jax.device_get(
        cti_scores(
            poisoned_fn,
            repaired_fn,
            deltas,
            d.val.images,
            d.val.labels,
            batch_size=s.eval_batch_size,
        )
    )
    per_class = np.asarray(scores.scores)
    return CTIResult(
        score=float(per_class.max()),
        target=int(per_class.argmax()),
        scores=scores,
        deltas=np.asarray(deltas),
        losses=np.asarray(losses),
        repaired=result.variables,
        repair=result,
    )
