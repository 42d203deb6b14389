"""Fine-tuning (with weight decay) on the defender's clean data: the simplest repair.

SGD with momentum on the cross-entropy of the defender's tuning images, with the usual
crop-and-flip augmentation; the backdoor fades as the model is pulled toward the clean data.
Defaults are Pick your Poison's grid-searched CIFAR-10 values at r = 1% (Lukas & Kerschbaum
2023, "Pick your Poison: Undetectability versus Robustness in Data Poisoning Attacks"): 1000
steps, lr 1e-3, weight decay 0.01, momentum 0.9. (Their code passed the weight-decay value as
the learning rate; jaxbd uses each for what it is.)
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from jaxbd.defenses.base import RepairContext, TuningPlan, Variables
from jaxbd.models.classifier import Classifier, EngineModel
from jaxbd.settings import require
from jaxbd.train import Trainer
from jaxbd.types import PyTree


@dataclasses.dataclass(frozen=True, kw_only=True)
class FineTune:
    """Fine-tuning on the defender's clean images.

    Attributes:
        steps: SGD steps.
        lr: learning rate (constant unless `cosine`).
        momentum: SGD momentum.
        weight_decay: L2 coefficient added to the gradient (PyTorch's convention).
        batch_size: images per step.
        cosine: decay the learning rate to 0 over the steps (BackdoorBench's schedule).

    Raises:
        InvalidSettingError: for a value out of range.
    """

    steps: int = 1000
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.01
    batch_size: int = 128
    cosine: bool = False
    name: ClassVar[str] = "finetune"
    # Cross-entropy on the logits: nothing else from the model.
    model_needs: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        check_optimizer(self)

    def plan(self, ctx: RepairContext, variables: Variables) -> TuningPlan:
        """Tune the model as it is on the defender's tuning images."""
        return TuningPlan(
            variables=variables,
            data=ctx.tune_data,
            steps=self.steps,
            lr=self.lr,
            cosine=self.cosine,
        )


def check_optimizer(repair) -> None:
    """The checks every repair's optimizer fields share (steps, lr, momentum, weight decay,
    batch size)."""
    require(
        isinstance(repair.steps, int) and repair.steps >= 0, "steps", "must be >= 0", repair.steps
    )
    require(0 < repair.lr < float("inf"), "lr", "must be a finite number > 0", repair.lr)
    require(0 <= repair.momentum < 1, "momentum", "must be in [0, 1)", repair.momentum)
    require(
        0 <= repair.weight_decay < float("inf"),
        "weight_decay",
        "must be a finite number >= 0",
        repair.weight_decay,
    )
    require(repair.batch_size >= 1, "batch_size", "must be >= 1", repair.batch_size)


def engine_classifier(
    trainer: Trainer, params: PyTree, batch_stats: PyTree, mask: PyTree | None = None
) -> Classifier:
    """The `Classifier` of a repair's engine (`RepairContext.trainer`) with these variables.

    Its module, declared taps and normalization are the engine's (`trainer.model`, unwrapped
    when it is already an `EngineModel`; `trainer.mean`, `trainer.std`), so a repair's
    `plan(ctx, variables)` calls the public functions that take a `Classifier`.

    Args:
        trainer: the engine.
        params: the parameters, any pruning mask already applied.
        batch_stats: the BatchNorm statistics.
        mask: the pruning mask (None: dense).
    """
    module, declared = trainer.model, {}
    if isinstance(module, EngineModel):
        declared = {"feature_layer": module.feature_layer, "taps": module.taps}
        module = module.module
    return Classifier(
        module, params, batch_stats, mean=trainer.mean, std=trainer.std, mask=mask, **declared
    )


def masked_classifier(trainer: Trainer, variables: Variables) -> Classifier:
    """`engine_classifier` of `variables` with their mask multiplied into the parameters
    (`params * mask`, leaf by leaf), the convention of a `Classifier`'s parameters."""
    params = jax.tree.map(jnp.multiply, variables.params, variables.mask)
    return engine_classifier(trainer, params, variables.batch_stats, variables.mask)
