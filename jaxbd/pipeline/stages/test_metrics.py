"""Test metrics of a model: clean accuracy, attack success, robust accuracy."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from jaxbd import metrics
from jaxbd.attacks import TriggeredTestSet
from jaxbd.data import Dataset
from jaxbd.train import Trainer, TrainState

EvaluateFn = Callable[[TrainState], dict[str, float]]


def evaluate(
    trainer: Trainer,
    state: TrainState,
    test_images: jax.Array,
    test_labels: np.ndarray,
    triggered: TriggeredTestSet,
    triggered_images: jax.Array,
) -> dict[str, float]:
    """Clean accuracy, ASR (target class excluded), ASR over all images, robust accuracy
    (definitions: docs/metrics.md).

    Args:
        trainer: supplies the compiled inference step.
        state: the model to evaluate.
        test_images: uint8[M, H, W, 3] clean test images on the device.
        test_labels: int32[M] their labels.
        triggered: the triggered test set (its labels and eligibility mask).
        triggered_images: `triggered.images` on the device.
    """
    clean = trainer.predict_labels(state, test_images)
    poisoned = trainer.predict_labels(state, triggered_images)
    return {
        "clean_accuracy": float(metrics.clean_accuracy(clean, test_labels)),
        "attack_success_rate": float(
            metrics.attack_success_rate(poisoned, triggered.labels, triggered.true_labels)
        ),
        "asr_all_images": float(metrics.asr_all_images(poisoned, triggered.labels)),
        "robust_accuracy": float(
            metrics.robust_accuracy(poisoned, triggered.labels, triggered.true_labels)
        ),
    }


def make_evaluate_fn(
    trainer: Trainer, test_set: Dataset, triggered: TriggeredTestSet
) -> EvaluateFn:
    """`state -> test metrics`, with the test sets copied to the devices once."""
    test_images = trainer.replicate(test_set.images)
    triggered_images = trainer.replicate(triggered.images)

    def evaluate_fn(state: TrainState) -> dict[str, float]:
        return evaluate(trainer, state, test_images, test_set.labels, triggered, triggered_images)

    return evaluate_fn
