"""Neural Cleanse as a detector (Wang et al. 2019): the anomaly index, the flagged labels and
a model's score.

A backdoor's target needs a much smaller reversed trigger than the other labels, so its mask
norm is an outlier below the median: the anomaly index |norm − median| / (1.4826·MAD)
exceeds 2 (`anomaly_index`, `flag_labels`). A model's score is the largest index among
labels whose norm is below the median, 0 if none (`neural_cleanse_score`). `TriggerSearch`
holds the search and outlier-test settings the repair (`jaxbd.defenses.neural_cleanse`) and
the detector (`NeuralCleanseDetectSettings`) share.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.defenses.neural_cleanse_reverse import ReversedTriggers, reverse_engineer
from jaxbd.models.classifier import Classifier
from jaxbd.settings import require, require_int

MAD_CONSISTENCY = 1.4826
"""Scales the median absolute deviation to the standard deviation of a normal distribution."""

_EPS = 1e-12  # keeps the anomaly index finite (0) when every norm is the same


def anomaly_index(norms: jax.Array) -> jax.Array:
    """The anomaly index of each label's mask norm (MAD-based outlier score).

    Args:
        norms: float32[C] the labels' reversed-trigger ℓ₁ norms.

    Returns:
        float32[C] |norm − median| / (1.4826 · median |norm − median|); 0 everywhere when the
        norms are all equal (the MAD is then 0 and so is every deviation).
    """
    norms = jnp.asarray(norms, jnp.float32)
    median = jnp.median(norms)
    deviation = jnp.abs(norms - median)
    mad = MAD_CONSISTENCY * jnp.median(deviation)
    return deviation / jnp.maximum(mad, _EPS)


def flag_labels(norms: jax.Array, threshold: float = 2.0) -> jax.Array:
    """The labels Neural Cleanse flags as backdoor targets.

    Args:
        norms: float32[C] the labels' reversed-trigger ℓ₁ norms.
        threshold: the anomaly index above which a label is an outlier (the paper's 2).

    Returns:
        bool[C]: anomaly index > threshold and norm below the median (only an unusually
        *small* trigger betrays a backdoor).
    """
    norms = jnp.asarray(norms, jnp.float32)
    return (anomaly_index(norms) > threshold) & (norms < jnp.median(norms))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TriggerSearch:
    """Neural Cleanse's trigger search and outlier test: the settings the repair
    (`NeuralCleanse`) and the detector (`NeuralCleanseDetectSettings`) share. Defaults: the
    released code's and BackdoorBench's.

    Attributes:
        epochs: reverse-engineering passes over the tuning images (per label, early stop
            may end sooner).
        init_cost: the ℓ₁ cost's initial weight.
        attack_threshold: the attack success an epoch must reach (0.99).
        patience: epochs on one side of the threshold before the cost changes.
        cost_multiplier: the cost's factor up (down: its power 1.5).
        early_stop: stop a label's search once its best norm stalls (see
            `reverse_engineer`).
        early_stop_threshold: relative improvement that resets the stall counter (0.99).
        early_stop_patience: stalled epochs before stopping (25).
        anomaly_threshold: anomaly index above which a label below the median is flagged.

    Raises:
        InvalidSettingError: for a value out of range.
    """

    epochs: int = 80
    init_cost: float = 1e-3
    attack_threshold: float = 0.99
    patience: int = 5
    cost_multiplier: float = 2.0
    early_stop: bool = True
    early_stop_threshold: float = 0.99
    early_stop_patience: int = 25
    anomaly_threshold: float = 2.0

    def __post_init__(self):
        for name in ("epochs", "patience", "early_stop_patience"):
            require_int(getattr(self, name), name, 1)
        require(self.init_cost >= 0, "init_cost", "must be >= 0", self.init_cost)
        require(
            0 < self.attack_threshold <= 1,
            "attack_threshold",
            "must be in (0, 1]",
            self.attack_threshold,
        )
        require(self.cost_multiplier > 1, "cost_multiplier", "must be > 1", self.cost_multiplier)
        require(
            0 < self.early_stop_threshold <= 1,
            "early_stop_threshold",
            "must be in (0, 1]",
            self.early_stop_threshold,
        )
        require(
            self.anomaly_threshold > 0, "anomaly_threshold", "must be > 0", self.anomaly_threshold
        )

    def search(
        self,
        classifier: Classifier,
        images: jax.Array | np.ndarray,
        num_classes: int,
        *,
        key: jax.Array,
        batch_size: int,
        lr: float,
    ) -> ReversedTriggers:
        """Every label's trigger reversed on `images` (`reverse_engineer` with these
        settings).

        Args:
            classifier: the examined model (pruning mask already applied to its parameters).
            images: uint8[N, H, W, 3] the defender's tuning images.
            num_classes: C.
            key: the search's randomness.
            batch_size: images per search step.
            lr: Adam's learning rate for the masks and patterns.
        """
        return reverse_engineer(
            classifier,
            images,
            num_classes,
            key=key,
            epochs=self.epochs,
            batch_size=batch_size,
            lr=lr,
            init_cost=self.init_cost,
            threshold=self.attack_threshold,
            patience=self.patience,
            cost_multiplier=self.cost_multiplier,
            early_stop=self.early_stop,
            early_stop_threshold=self.early_stop_threshold,
            early_stop_patience=self.early_stop_patience,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class NeuralCleanseDetectSettings(TriggerSearch):
    """Neural Cleanse detection's settings (`config.detector.neural_cleanse`): the trigger
    search's (`TriggerSearch`: epochs, the cost schedule, the early stop, the flagging
    threshold) and its batch and learning rate.

    Attributes:
        batch_size: reverse-engineering images per step.
        lr: Adam's learning rate for the masks and patterns.
    """

    batch_size: int = 128
    lr: float = 0.1
    # The trigger search reads the model's logits only.
    model_needs: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        super().__post_init__()
        require_int(self.batch_size, "batch_size", 1)
        require(self.lr > 0, "lr", "must be > 0", self.lr)


def neural_cleanse_score(norms: jax.Array | np.ndarray) -> float:
    """A model's Neural Cleanse score from its labels' reversed-trigger norms.

    Args:
        norms: float[C] the ℓ₁ mask norms.

    Returns:
        The largest anomaly index among labels whose norm is below the median; 0 if none.
    """
    norms = np.asarray(norms, np.float32)
    index = np.asarray(anomaly_index(norms))
    below = norms < np.median(norms)
    return float(index[below].max()) if below.any() else 0.0
