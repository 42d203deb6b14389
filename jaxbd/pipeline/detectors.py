"""The detectors the detection pipeline runs: the registry, its context, and each detector's
glue from a `DetectContext` to the pure detection functions of `jaxbd.defenses`.

Registered: `strip` (input-level, Gao et al. 2019); the model-level `neural_cleanse` (Wang
et al. 2019: the largest anomaly index below the median of the reversed triggers' norms) and
`cti` (Calibrated Trigger Inversion, Lukas & Kerschbaum 2023), each reporting one `score` per
model (`jaxbd.defenses.cti`). See `jaxbd.pipeline.detect` for how to add one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from ml_collections import config_dict

from jaxbd import defenses, metrics
from jaxbd.defenses import cti as cti_lib
from jaxbd.defenses import curve
from jaxbd.defenses import strip as strip_lib
from jaxbd.defenses.base import Variables
from jaxbd.defenses.neural_cleanse import anomaly_index, flag_labels
from jaxbd.pipeline import engine, setup
from jaxbd.pipeline.config import ExperimentSettings
from jaxbd.settings import ConfigError
from jaxbd.train import Trainer


@dataclasses.dataclass(frozen=True)
class DetectContext:
    """What a detector may use.

    Attributes:
        model: the source's model (parameters — pruned weights already zero —, BatchNorm
            statistics, mask), replicated on the trainer's devices.
        logits_fn: `images uint8[B, H, W, 3] -> logits float32[B, C]` of `model` in
            inference mode, normalization included; a `jax.tree_util.Partial`, so jitted
            callers (`jaxbd.defenses.strip.strip_scores`) trace the variables as inputs and
            compile once.
        trainer: the source's engine (its model, normalization, inference batch size).
        defender: the defender's clean images (tuning part and held-out part).
        stage: the source run's data rebuilt by the setup stage (`splits.test`,
            `triggered`, `poisoned`, `attack`).
        key: the detector's own PRNG stream ("detect/<name>" of `config.seed`).
        num_classes: C.
        experiment: the source's training settings (with this run's runtime), for a
            detector that builds its own engine (CTI's repair optimizer); None outside the
            pipeline.
    """

    model: Variables
    logits_fn: jax.tree_util.Partial
    trainer: Trainer
    defender: defenses.DefenderData
    stage: setup.Setup
    key: jax.Array
    num_classes: int
    experiment: ExperimentSettings | None = None


@dataclasses.dataclass(frozen=True)
class Detection:
    """A detector's result.

    Attributes:
        summary: JSON-able fields merged into `summary.json`.
        arrays: arrays written to `scores.npz` (e.g. per-input scores); none: no file.
        plots: file name (e.g. "entropy.png") -> `draw(path)` writing that figure; needs
            matplotlib (skipped with a warning when it is missing).
    """

    summary: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    plots: Mapping[str, Callable[[str], None]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Detector:
    """A registered detector (see the module docstring).

    Attributes:
        settings: a frozen settings dataclass, built from `config.detector.<name>`.
        detect: `(ctx: DetectContext, settings) -> Detection`.
        check: optional `(settings, defender: DefenderData) -> None`, raising `ConfigError`
            before the workdir is claimed.
        paper: the method's reference, for `--help`-like listings.
    """

    settings: type
    detect: Callable[[DetectContext, Any], Detection]
    check: Callable[[Any, defenses.DefenderData], None] | None = None
    paper: str = ""


# -- STRIP ---------------------------------------------------------------------------------


def _check_strip(settings: strip_lib.StripSettings, defender: defenses.DefenderData) -> None:
    if settings.overlays > len(defender.tune):
        raise ConfigError(
            f"config.detector.strip.overlays={settings.overlays} exceeds the defender's "
            f"{len(defender.tune)} tuning images: lower it, or raise config.defender.fraction"
        )


def _strip(ctx: DetectContext, settings: strip_lib.StripSettings) -> Detection:
    """STRIP (Gao et al. 2019): overlays from the defender's tuning images, the threshold
    from its held-out images, FRR/FAR/ROC AUC on the test set."""
    d, stage = ctx.defender, ctx.stage
    # Overlays are drawn without replacement, as the paper draws N distinct clean images.
    chosen = jax.random.choice(ctx.key, len(d.tune), (settings.overlays,), replace=False)
    overlay_indices = np.sort(np.asarray(chosen))
    overlays = d.tune.images[overlay_indices]
    score = functools.partial(
        strip_lib.strip_scores,
        ctx.logits_fn,
        overlays=overlays,
        blend=settings.blend,
        batch_size=settings.batch_size,
    )
    # The threshold is fixed from held-out clean images before any judged input is scored.
    val_scores = np.asarray(score(d.val.images))
    threshold = strip_lib.frr_threshold(val_scores, settings.frr)
    triggered = stage.triggered
    clean_scores = np.asarray(score(stage.splits.test.images))
    triggered_scores = np.asarray(score(triggered.images[triggered.eligible]))
    clean_flagged = strip_lib.flag_triggered(clean_scores, threshold)
    triggered_flagged = strip_lib.flag_triggered(triggered_scores, threshold)
    judged = np.concatenate([clean_scores, triggered_scores])
    is_triggered = np.concatenate(
        [np.zeros(len(clean_scores), bool), np.ones(len(triggered_scores), bool)]
    )
    # roc_auc ranks "higher = more likely positive"; low entropy means triggered.
    auc = float(metrics.roc_auc(-judged, is_triggered))
    summary = {
        "threshold": threshold,
        "overlays": settings.overlays,
        "blend": settings.blend,
        "target_frr": settings.frr,
        "frr": _mean(clean_flagged),
        "far": _mean(~triggered_flagged),
        "roc_auc": auc,
        "val_frr": _mean(strip_lib.flag_triggered(val_scores, threshold)),
        "num_val": len(val_scores),
        "num_clean": len(clean_scores),
        "num_triggered": len(triggered_scores),
        "mean_entropy_val": _mean(val_scores),
        "mean_entropy_clean": _mean(clean_scores),
        "mean_entropy_triggered": _mean(triggered_scores),
    }
    logging.info(
        "strip: threshold %.4f bits (%d overlays); FRR %.4f, FAR %.4f, ROC AUC %.4f",
        threshold,
        settings.overlays,
        summary["frr"],
        summary["far"],
        auc,
    )
    return Detection(
        summary=summary,
        arrays={
            "val": val_scores,
            "clean": clean_scores,
            "triggered": triggered_scores,
            "overlay_indices": d.tune_indices[overlay_indices],
        },
        plots={
            "entropy.png": functools.partial(
                plot_entropy, clean_scores, triggered_scores, threshold
            )
        },
    )


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def plot_entropy(clean: np.ndarray, triggered: np.ndarray, threshold: float, path: str) -> None:
    """Histogram of STRIP scores, clean vs triggered test inputs, the threshold marked.

    Args:
        clean: float[M] scores of clean test inputs.
        triggered: float[T] scores of triggered (non-target) test inputs.
        threshold: inputs below it are flagged.
        path: where the PNG goes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    both = np.concatenate([clean, triggered, [threshold]])
    bins = np.linspace(float(both.min()), float(both.max()) + 1e-6, 41)
    ax.hist(clean, bins=bins, alpha=0.6, density=True, label=f"clean ({len(clean)})")
    ax.hist(triggered, bins=bins, alpha=0.6, density=True, label=f"triggered ({len(triggered)})")
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label="threshold")
    ax.set_xlabel("mean prediction entropy over overlays (bits)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("STRIP entropy (flagged: left of the threshold)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- model-level detectors: Neural Cleanse, Calibrated Trigger Inversion --------------------


def _neural_cleanse(ctx: DetectContext, settings: cti_lib.NeuralCleanseDetectSettings) -> Detection:
    """Neural Cleanse (Wang et al. 2019) as a model score: every label's trigger reversed on
    the defender's tuning images; the largest anomaly index below the median."""
    trainer = ctx.trainer
    triggers = jax.device_get(
        settings.search(
            trainer.model,
            ctx.model,
            ctx.defender.tune.images,
            ctx.num_classes,
            key=ctx.key,
            mean=trainer.mean,
            std=trainer.std,
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


def _check_cti(settings: cti_lib.CTISettings, defender: defenses.DefenderData) -> None:
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


def _cti(ctx: DetectContext, settings: cti_lib.CTISettings) -> Detection:
    """Calibrated Trigger Inversion (Lukas & Kerschbaum 2023): a Pivotal-Tuning-repaired
    reference, one δ per class, scored on the defender's held-out images."""
    if ctx.experiment is None:
        raise ValueError("cti needs DetectContext.experiment (the source's settings)")
    exp = ctx.experiment
    # The repair's own optimizer and batch size, as scripts/defend.py builds its engine.
    trainer = engine.make_trainer(
        dataclasses.replace(
            exp,
            train=dataclasses.replace(
                exp.train,
                batch_size=settings.repair_batch_size,
                momentum=settings.repair_momentum,
                weight_decay=settings.repair_weight_decay,
            ),
        ),
        ctx.num_classes,
    )
    d = ctx.defender
    val_images = trainer.replicate(d.val.images)

    def validate(params, batch_stats) -> float:
        logits, _ = trainer.predict_variables(params, batch_stats, val_images)
        return float(np.mean(np.asarray(jax.device_get(logits.argmax(-1))) == d.val.labels))

    repair_ctx = defenses.RepairContext(
        trainer=trainer,
        defender=d,
        tune_data=trainer.put(d.tune.images, d.tune.labels),
        key=ctx.key,
        validate=validate,
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
        check=_check_strip,
        paper="Gao et al. 2019, STRIP: A Defence Against Trojan Attacks on Deep Neural Networks",
    ),
    "neural_cleanse": Detector(
        settings=cti_lib.NeuralCleanseDetectSettings,
        detect=_neural_cleanse,
        paper="Wang et al. 2019, Neural Cleanse: Identifying and Mitigating Backdoor Attacks "
        "in Neural Networks",
    ),
    "cti": Detector(
        settings=cti_lib.CTISettings,
        detect=_cti,
        check=_check_cti,
        paper="Lukas & Kerschbaum 2023, Pick your Poison: Undetectability versus Robustness "
        "in Data Poisoning Attacks (Calibrated Trigger Inversion)",
    ),
}
"""Detector name -> `Detector`; `config.detector.name` picks one."""


def settings_config(cls: type) -> ml_collections.ConfigDict:
    """A ConfigDict of a settings dataclass's defaults (a None default becomes a typed
    placeholder, int or float after its annotation), for `config.detector.<name>`."""
    section = ml_collections.ConfigDict()
    for field in dataclasses.fields(cls):
        default = field.default
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        if default is None:
            kind = float if "float" in str(field.type) else int
            section[field.name] = config_dict.placeholder(kind)
        elif default is not dataclasses.MISSING:
            section[field.name] = default
    return section
