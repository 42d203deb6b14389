"""The detector registry: each detector's settings, its needs and its glue from a
`DetectorContext` to the pure detection functions.

`DETECTORS` maps a name to a `Detector`. An *input* detector (STRIP) judges named sets of
inputs (`DetectorContext.inputs`) with a threshold it sets on the defender's held-out clean
images; a *model* detector (Neural Cleanse's anomaly score, CTI) scores the model itself.
Every decision reads the defender's images only. `jaxbd.defenses.detect` runs one on any
`Classifier`; `scripts/detect.py` adds test-set figures (FRR, FAR, ROC AUC) around the same
call. Adding a detector is one module with its settings and function, plus one entry here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import numpy as np
from absl import logging

from jaxbd.defenses import cti as cti_lib
from jaxbd.defenses import curve
from jaxbd.defenses import strip as strip_lib
from jaxbd.defenses.base import RepairContext, Variables
from jaxbd.defenses.defender_data import DefenderData
from jaxbd.defenses.finetune import masked_classifier
from jaxbd.defenses.neural_cleanse import anomaly_index, flag_labels
from jaxbd.defenses.tuning import validator
from jaxbd.models.classifier import Classifier
from jaxbd.settings import ConfigError
from jaxbd.train import Trainer

MakeTrainer = Callable[[int, float, float], Trainer]
"""`make_trainer(batch_size, momentum, weight_decay) -> Trainer`: an engine for the examined
model with another optimizer (CTI's reference repair)."""


@dataclasses.dataclass(frozen=True)
class DetectorContext:
    """What a detector may use.

    Attributes:
        model: the examined model's variables (pruned weights already zero).
        logits_fn: `images uint8[B, H, W, C] -> logits float32[B, C]` in inference mode,
            normalization included; a `jax.tree_util.Partial` (traced, compiled once).
        trainer: the engine of the examined model (its module, normalization, batch sizes).
        defender: the defender's clean images (tuning part and held-out part).
        key: the detector's own PRNG stream.
        num_classes: C.
        inputs: for an input detector, the named sets of uint8 images it judges.
        make_trainer: an engine with another optimizer (see `MakeTrainer`).
    """

    model: Variables
    logits_fn: jax.tree_util.Partial
    trainer: Trainer
    defender: DefenderData
    key: jax.Array
    num_classes: int
    inputs: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    make_trainer: MakeTrainer | None = None

    def classifier(self) -> Classifier:
        """The examined model as a `Classifier` (the engine's module and normalization)."""
        return masked_classifier(self.trainer, self.model)


@dataclasses.dataclass(frozen=True)
class Detection:
    """A detector's result.

    Attributes:
        summary: JSON-able figures (a model detector: at least "score").
        arrays: arrays worth keeping (per-input scores, reversed triggers).
        flagged: an input detector's verdict per judged set, bool[M] (True: triggered).
        scores: an input detector's score per judged set, float[M] (low: likely triggered).
    """

    summary: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    flagged: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    scores: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Detector:
    """A registered detector.

    Attributes:
        settings: its frozen settings dataclass (`config.detector.<name>`); its class
            attribute `model_needs` says what it reads inside the model.
        detect: `(ctx: DetectorContext, settings) -> Detection`.
        kind: "input" (judges `ctx.inputs`) or "model" (scores the model).
        check: optional `(settings, defender) -> None` raising `ConfigError` before any work.
        paper: the method's reference.
    """

    settings: type
    detect: Callable[[DetectorContext, Any], Detection]
    kind: Literal["input", "model"] = "model"
    check: Callable[[Any, DefenderData], None] | None = None
    paper: str = ""


# -- STRIP ---------------------------------------------------------------------------------


def _check_strip(settings: strip_lib.StripSettings, defender: DefenderData) -> None:
    if settings.overlays > len(defender.tune):
        raise ConfigError(
            f"config.detector.strip.overlays={settings.overlays} exceeds the defender's "
            f"{len(defender.tune)} tuning images: lower it, or raise config.defender.fraction"
        )


def _strip(ctx: DetectorContext, settings: strip_lib.StripSettings) -> Detection:
    """STRIP (Gao et al. 2019): overlays from the defender's tuning images, the threshold
    from its held-out images, then every judged set scored and flagged."""
    d = ctx.defender
    # Overlays are drawn without replacement, as the paper draws N distinct clean images.
    chosen = jax.random.choice(ctx.key, len(d.tune), (settings.overlays,), replace=False)
    overlay_indices = np.sort(np.asarray(chosen))
    score = functools.partial(
        strip_lib.strip_scores,
        ctx.logits_fn,
        overlays=d.tune.images[overlay_indices],
        blend=settings.blend,
        batch_size=settings.batch_size,
    )
    # The threshold is fixed from held-out clean images before any judged input is scored.
    val_scores = np.asarray(score(d.val.images))
    threshold = strip_lib.frr_threshold(val_scores, settings.frr)
    scores = {name: np.asarray(score(images)) for name, images in ctx.inputs.items()}
    summary = {
        "threshold": threshold,
        "overlays": settings.overlays,
        "blend": settings.blend,
        "target_frr": settings.frr,
        "val_frr": _mean(strip_lib.flag_triggered(val_scores, threshold)),
        "num_val": len(val_scores),
        "mean_entropy_val": _mean(val_scores),
    }
    for name, s in scores.items():
        summary[f"num_{name}"] = len(s)
        summary[f"mean_entropy_{name}"] = _mean(s)
    return Detection(
        summary=summary,
        arrays={"val": val_scores, **scores, "overlay_indices": d.tune_indices[overlay_indices]},
        flagged={name: strip_lib.flag_triggered(s, threshold) for name, s in scores.items()},
        scores=scores,
    )


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


# -- model-level detectors: Neural Cleanse, Calibrated Trigger Inversion --------------------


def _neural_cleanse(
    ctx: DetectorContext, settings: cti_lib.NeuralCleanseDetectSettings
) -> Detection:
    """Neural Cleanse (Wang et al. 2019) as a model score: every label's trigger reversed on
    the defender's tuning images; the largest anomaly index below the median."""
    triggers = jax.device_get(
        settings.search(
            ctx.classifier(),
            ctx.defender.tune.images,
            ctx.num_classes,
            key=ctx.key,
            batch_size=settings.batch_size,
            lr=settings.lr,
        )
    )
    norms = np.asarray(triggers.norms)
    index = np.asarray(anomaly_index(norms))
    flagged = np.flatnonzero(np.asarray(flag_labels(norms, settings.anomaly_threshold)))
    score = cti_lib.neural_cleanse_score(norms)
    logging.info("neural_cleanse: score %.3f, flagged labels %s", score, flagged.tolist())
    return Detection(
        summary={
            "score": score,
            "flagged": bool(len(flagged)),
            "flagged_labels": flagged.tolist(),
            "norms": norms.tolist(),
            "anomaly_index": index.tolist(),
            "attack_success": np.asarray(triggers.attack_success).tolist(),
            "reached_threshold": np.asarray(triggers.reached).tolist(),
        },
        arrays={"masks": np.asarray(triggers.masks), "patterns": np.asarray(triggers.patterns)},
    )


def _check_cti(settings: cti_lib.CTISettings, defender: DefenderData) -> None:
    if settings.repair_batch_size > len(defender.tune):
        raise ConfigError(
            f"config.detector.cti.repair_batch_size={settings.repair_batch_size} exceeds the "
            f"defender's {len(defender.tune)} tuning images: lower it, or raise "
            "config.defender.fraction"
        )
    warning = curve.budget_warning(
        settings.repair_delta, len(defender.val), "config.detector.cti.repair_delta"
    )
    if warning:
        logging.warning(warning)


def _cti(ctx: DetectorContext, settings: cti_lib.CTISettings) -> Detection:
    """Calibrated Trigger Inversion (Lukas & Kerschbaum 2023): a Pivotal-Tuning-repaired
    reference, one δ per class, scored on the defender's held-out images."""
    if ctx.make_trainer is None:
        raise ValueError("cti needs DetectorContext.make_trainer (its repair's engine)")
    trainer = ctx.make_trainer(
        settings.repair_batch_size, settings.repair_momentum, settings.repair_weight_decay
    )
    d = ctx.defender
    repair_ctx = RepairContext(
        trainer=trainer,
        defender=d,
        tune_data=trainer.put(d.tune.images, d.tune.labels),
        key=ctx.key,
        validate=validator(trainer, d.val),
        num_classes=ctx.num_classes,
    )
    result = cti_lib.calibrated_trigger_inversion(repair_ctx, ctx.model, settings)
    rows, returned = result.repair.rows, result.repair.returned_step
    after = next(r["val_accuracy"] for r in rows if r["step"] == returned)
    logging.info(
        "cti: score %.3f (class %d); repair val accuracy %.4f -> %.4f at step %d",
        result.score,
        result.target,
        rows[0]["val_accuracy"],
        after,
        returned,
    )
    sc = result.scores
    return Detection(
        summary={
            "score": result.score,
            "suspected_target": result.target,
            "class_scores": np.asarray(sc.scores).tolist(),
            "poisoned_success": np.asarray(sc.poisoned_success).tolist(),
            "repaired_success": np.asarray(sc.repaired_success).tolist(),
            "num_judged": np.asarray(sc.judged).tolist(),
            "repair_returned_step": returned,
            "repair_steps_run": result.repair.steps,
            "repair_val_accuracy_before": rows[0]["val_accuracy"],
            "repair_val_accuracy_after": after,
            "final_inversion_loss": result.losses[:, -1].tolist(),
        },
        arrays={"deltas": result.deltas, "losses": result.losses},
    )


DETECTORS: dict[str, Detector] = {
    "strip": Detector(
        settings=strip_lib.StripSettings,
        detect=_strip,
        kind="input",
        check=_check_strip,
        paper="Gao et al. 2019, STRIP: A Defence Against Trojan Attacks on Deep Neural Networks",
    ),
    "neural_cleanse": Detector(
        settings=cti_lib.NeuralCleanseDetectSettings,
        detect=_neural_cleanse,
        kind="model",
        paper="Wang et al. 2019, Neural Cleanse: Identifying and Mitigating Backdoor Attacks "
        "in Neural Networks",
    ),
    "cti": Detector(
        settings=cti_lib.CTISettings,
        detect=_cti,
        kind="model",
        check=_check_cti,
        paper="Lukas & Kerschbaum 2023, Pick your Poison: Undetectability versus Robustness "
        "in Data Poisoning Attacks (Calibrated Trigger Inversion)",
    ),
}
"""Detector name -> `Detector`; `config.detector.name` picks one."""
