"""What the detection pipeline adds around a registered detector: the inputs an input
detector judges (the clean test set and the triggered one) and the figures that need the
ground truth (FRR, FAR, ROC AUC, the entropy histogram). The registry and the detectors
themselves live in `jaxbd.defenses.detectors`; nothing here decides anything.
"""

from __future__ import annotations

import functools

import numpy as np
from absl import logging

from jaxbd import metrics
from jaxbd.defenses.detectors import (
    DETECTORS,
    Detection,
    Detector,
    DetectorContext,
)
from jaxbd.pipeline.stages import setup
from jaxbd.settings import config_section

__all__ = [
    "DETECTORS",
    "Detection",
    "Detector",
    "DetectorContext",
    "judged_inputs",
    "plot_entropy",
    "settings_config",
    "with_test_figures",
]


settings_config = config_section
"""A ConfigDict of a detector's settings defaults (`jaxbd.settings.config_section`)."""


def judged_inputs(stage: setup.Setup) -> dict[str, np.ndarray]:
    """The inputs an input detector judges in the pipeline: the clean test images and the
    triggered test images of the eligible (non-target) examples."""
    triggered = stage.triggered
    return {
        "clean": stage.splits.test.images,
        "triggered": triggered.images[triggered.eligible],
    }


def with_test_figures(name: str, detection: Detection) -> tuple[dict, dict]:
    """An input detection's summary with its test-set figures (FRR on the clean inputs,
    FAR on the triggered ones, ROC AUC of the scores) and its plots; a model detection's
    summary as it is and no plots."""
    summary = dict(detection.summary)
    if not detection.flagged:
        return summary, {}
    clean, triggered = detection.scores["clean"], detection.scores["triggered"]
    judged = np.concatenate([clean, triggered])
    is_triggered = np.concatenate([np.zeros(len(clean), bool), np.ones(len(triggered), bool)])
    # roc_auc ranks "higher = more likely positive"; a low score means triggered.
    auc = float(metrics.roc_auc(-judged, is_triggered))
    summary["frr"] = _mean(detection.flagged["clean"])
    summary["far"] = _mean(~detection.flagged["triggered"])
    summary["roc_auc"] = auc
    logging.info(
        "%s: threshold %.4f; FRR %.4f, FAR %.4f, ROC AUC %.4f",
        name,
        summary["threshold"],
        summary["frr"],
        summary["far"],
        auc,
    )
    plots = {"entropy.png": functools.partial(plot_entropy, clean, triggered, summary["threshold"])}
    return summary, plots


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def plot_entropy(clean: np.ndarray, triggered: np.ndarray, threshold: float, path: str) -> None:
    """Histogram of an input detector's scores (STRIP's entropy), clean vs triggered test
    inputs, the threshold marked.

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
