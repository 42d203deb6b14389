"""Model-level detection quality: ROC AUC of each detector over a zoo of clean and
backdoored models (Pick your Poison's protocol, Lukas & Kerschbaum 2023).

`run(config, workdir)` (what `scripts/zoo.py` calls, `configs/zoo.py`):

1. the zoo: `config.zoo.backdoored` models (model k attacked with
   `zoo.attacks[k % len(attacks)]`, seeded k) and `config.zoo.clean` ones (`attack.fraction
   = 0`), each a normal `jaxbd.pipeline.experiment.run` in `models/<attack|clean>/seed<k>`;
2. the detections: every detector of `config.zoo.detectors` on every model through
   `jaxbd.pipeline.detect.run`, in `detections/<detector>/<attack|clean>/seed<k>`;
3. the report: `models.csv`/`.md`, `auc.json` (ROC AUC per detector with its bootstrap
   interval) and `roc.png`; a backdoored model below `zoo.min_asr` is listed, not examined.

Finished runs are read back, interrupted ones resume; `zoo.json` records the configuration
and a different one is refused. In detail: docs/grids.md.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxbd import attacks, metrics, runs
from jaxbd.pipeline import defaults, detect, experiment
from jaxbd.runs.rundir import SUMMARY_FILE
from jaxbd.settings import ConfigError, from_config

ZOO_FILE = "zoo.json"
CLEAN = "clean"
"""The directory name (and `attack` column) of the zoo's clean models."""

# What may change between invocations: the zoo's size, the detectors run, the learned-backdoor
# bar (a model it newly admits is examined then), the bootstrap.
_ZOO_EXECUTION = (
    *runs.EXECUTION,
    "zoo.backdoored",
    "zoo.clean",
    "zoo.detectors",
    "zoo.min_asr",
    "zoo.bootstrap",
    "zoo.bootstrap_seed",
)


def models(config: ml_collections.ConfigDict) -> list[tuple[str, int]]:
    """The zoo's models as (attack or "clean", seed), backdoored first."""
    names = list(config.zoo.attacks)
    backdoored = [(names[k % len(names)], k) for k in range(config.zoo.backdoored)]
    return backdoored + [(CLEAN, k) for k in range(config.zoo.clean)]


def model_config(config: ml_collections.ConfigDict, attack: str, seed: int):
    """The experiment configuration of one model (the zoo section removed)."""
    c = copy.deepcopy(config)
    with c.unlocked():  # configs from the command line (config_flags) are locked
        del c["zoo"]
    c.seed = seed
    if attack == CLEAN:
        # The same recipe, nothing poisoned: the attack only defines the triggered test set
        # whose ASR the table reports (a clean model's is chance level).
        c.attack.fraction = 0.0
    else:
        c.attack.name = attack
    return c


def model_dir(workdir: str, attack: str, seed: int) -> str:
    """Where a model's run directory lives."""
    return os.path.join(workdir, "models", attack, f"seed{seed}")


def detection_dir(workdir: str, detector: str, attack: str, seed: int) -> str:
    """Where a detector's run on a model lives."""
    return os.path.join(workdir, "detections", detector, attack, f"seed{seed}")


def detection_config(config: ml_collections.ConfigDict, detector: str, source: str):
    """The detection configuration of one detector on one model."""
    c = defaults.detect_config()
    c.source = source
    c.seed = config.zoo.detect_seed
    for key, value in config.zoo.defender.items():
        c.defender[key] = value
    c.detector.name = detector
    for key, value in config.zoo.detector[detector].items():
        c.detector[detector][key] = value
    for key in c.runtime:
        if key in config.runtime:
            c.runtime[key] = config.runtime[key]
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the zoo settings and every model's experiment settings before any work.

    Raises:
        ConfigError: naming the offending field.
    """
    if "zoo" not in config:
        raise ConfigError("config.zoo: missing; a zoo config needs zoo.attacks (configs/zoo.py)")
    z = config.zoo
    names = list(z.attacks)
    if not names or any(a not in attacks.ATTACKS for a in names) or len(set(names)) < len(names):
        raise ConfigError(
            f"config.zoo.attacks: must be distinct names from {sorted(attacks.ATTACKS)}, "
            f"got {names}"
        )
    for field in ("backdoored", "clean"):
        value = z[field]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"config.zoo.{field}: must be an integer >= 1, got {value!r}")
    dets = list(z.detectors)
    if not dets or any(d not in detect.DETECTORS for d in dets) or len(set(dets)) < len(dets):
        raise ConfigError(
            f"config.zoo.detectors: must be distinct names from {sorted(detect.DETECTORS)}, "
            f"got {dets}"
        )
    for d in dets:
        from_config(detect.DETECTORS[d].settings, z.detector.get(d), f"config.zoo.detector.{d}")
    if (
        not isinstance(z.min_asr, (int, float))
        or isinstance(z.min_asr, bool)
        or not (0.0 <= z.min_asr <= 1.0)
    ):
        raise ConfigError(f"config.zoo.min_asr: must be a number in [0, 1], got {z.min_asr!r}")
    if not isinstance(z.bootstrap, int) or z.bootstrap < 1:
        raise ConfigError(f"config.zoo.bootstrap: must be an integer >= 1, got {z.bootstrap!r}")
    for attack in [*names, CLEAN]:
        experiment.validate_config(model_config(config, attack, 0))


def _claim(workdir: str, config: ml_collections.ConfigDict) -> runs.DirectoryLock:
    """Records the zoo's configuration, or refuses a workdir holding another zoo."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, ZOO_FILE)
    new = config.to_dict()
    if not os.path.exists(path) and set(os.listdir(workdir)) - {runs.LOCK_FILE}:
        raise runs.RunDirError(
            f"{workdir} is not empty and holds no {ZOO_FILE}: it is not a jaxbd zoo "
            "directory, and jaxbd will not write into it. Choose another --workdir."
        )
    lock = runs.lock_directory(workdir, what="zoo workdir")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = runs.differences(old, new, execution=_ZOO_EXECUTION)
        if diff:
            lock.release()
            raise runs.RunDirError(
                f"{workdir} holds a zoo with a different configuration:\n  "
                + "\n  ".join(diff)
                + "\nUse the same configuration to continue it, or choose another --workdir."
            )
    runs.write_json_atomic(path, new)
    return lock


def _finished(path: str) -> dict | None:
    summary = os.path.join(path, SUMMARY_FILE)
    if not os.path.exists(summary):
        return None
    with open(summary) as f:
        return json.load(f)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or continues) the zoo, runs its detectors and writes the report.

    Args:
        config: an experiment configuration with a `zoo` section (see
            `jaxbd.configs.zoo_config`).
        workdir: the zoo's directory.

    Returns:
        `{"models": rows, "auc": {detector: {...}}}`, as written to `models.csv` and
        `auc.json`.
    """
    validate(config)
    workdir = os.path.abspath(workdir)
    lock = _claim(workdir, config)
    started = time.perf_counter()
    try:
        rows = []
        model_seconds = 0.0  # what every model's runs recorded, over all invocations
        for attack, seed in models(config):
            path = model_dir(workdir, attack, seed)
            summary = _finished(path)
            if summary is None:
                logging.info("zoo: training %s seed %d", attack, seed)
                summary = experiment.run(model_config(config, attack, seed), path)
            else:
                logging.info("zoo: %s seed %d finished, skipped", attack, seed)
            model_seconds += summary.get("wall_seconds", 0.0)
            row = {
                "model": f"{attack}/seed{seed}",
                "attack": attack,
                "seed": seed,
                "backdoored": attack != CLEAN,
                "clean_accuracy": summary["clean_accuracy"],
                "attack_success_rate": summary["attack_success_rate"],
                "learned": learned(attack, summary["attack_success_rate"], config.zoo.min_asr),
            }
            for name in config.zoo.detectors:
                if row["learned"] is False:  # no backdoor to detect: not in the AUC
                    row[f"{name}_score"] = None
                    continue
                out = detection_dir(workdir, name, attack, seed)
                found = _finished(out)
                if found is None:
                    logging.info("zoo: %s on %s seed %d", name, attack, seed)
                    found = detect.run(detection_config(config, name, path), out)
                model_seconds += found.get("wall_seconds", 0.0)
                row[f"{name}_score"] = found["score"]
            rows.append(row)
        judged = [r for r in rows if r["learned"] is not False]
        auc = {
            name: {
                **auc_with_interval(
                    np.array([r[f"{name}_score"] for r in judged], np.float64),
                    np.array([r["backdoored"] for r in judged]),
                    draws=config.zoo.bootstrap,
                    seed=config.zoo.bootstrap_seed,
                ),
                "excluded": [r["model"] for r in rows if r["learned"] is False],
            }
            for name in config.zoo.detectors
        }
        write_report(
            workdir, rows, auc, seconds=time.perf_counter() - started, model_seconds=model_seconds
        )
    finally:
        lock.release()
    return {"models": rows, "auc": auc}


def learned(attack: str, attack_success_rate: float, min_asr: float) -> bool | None:
    """Whether a backdoored model learned its backdoor (ASR ≥ `min_asr`); None for a clean
    model. A poisoned model that did not learn it carries no backdoor to detect: counting it
    as a positive would charge the detector for the attack's failure."""
    if attack == CLEAN:
        return None
    return bool(attack_success_rate >= min_asr)


def auc_with_interval(
    scores: np.ndarray, is_positive: np.ndarray, *, draws: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """ROC AUC and its percentile bootstrap interval over models.

    Args:
        scores: float[M] one score per model (higher: more likely backdoored).
        is_positive: bool[M] whether each model is backdoored.
        draws: bootstrap resamples of the M models, with replacement.
        seed: the resampling seed.

    Returns:
        `auc`, `low` and `high` (2.5th and 97.5th percentiles of the resampled AUCs; None
        when no resample had both kinds of model), `draws`, `valid_draws` (resamples with a
        positive and a negative), `positives`, `negatives`.
    """
    scores = np.asarray(scores, np.float32)
    is_positive = np.asarray(is_positive, bool)
    m = len(scores)
    picks = np.random.default_rng(seed).integers(0, m, size=(draws, m))
    # One vectorized call; a resample of one kind only gives NaN (roc_auc's convention).
    resampled = np.asarray(
        jax.vmap(metrics.roc_auc)(jnp.asarray(scores[picks]), jnp.asarray(is_positive[picks]))
    )
    valid = resampled[np.isfinite(resampled)]
    point = float(metrics.roc_auc(scores, is_positive))
    return {
        "auc": point if np.isfinite(point) else None,
        "low": float(np.percentile(valid, 2.5)) if len(valid) else None,
        "high": float(np.percentile(valid, 97.5)) if len(valid) else None,
        "draws": int(draws),
        "valid_draws": len(valid),
        "positives": int(is_positive.sum()),
        "negatives": int((~is_positive).sum()),
    }


def roc_curve(scores: np.ndarray, is_positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) of every threshold, from (0, 0) to (1, 1);
    tied scores move both rates at once."""
    scores, is_positive = np.asarray(scores, np.float64), np.asarray(is_positive, bool)
    thresholds = np.unique(scores)[::-1]
    pos, neg = max(is_positive.sum(), 1), max((~is_positive).sum(), 1)
    tpr = [0.0] + [float(np.sum(is_positive & (scores >= t)) / pos) for t in thresholds]
    fpr = [0.0] + [float(np.sum(~is_positive & (scores >= t)) / neg) for t in thresholds]
    return np.array(fpr), np.array(tpr)


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def write_report(
    workdir: str,
    rows: list[dict],
    auc: dict[str, dict],
    *,
    seconds: float = 0.0,
    model_seconds: float = 0.0,
) -> None:
    """`models.csv`, `models.md`, `auc.json` and `roc.png` (skipped without matplotlib).

    `auc.json` records `seconds`, this invocation's wall time, and `model_seconds`, the wall
    time the zoo's training and detection runs recorded (the whole zoo's cost, summed over
    the invocations that built it: a zoo grown in two steps reports both).
    """
    columns = list(rows[0])
    tmp = os.path.join(workdir, "models.csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, os.path.join(workdir, "models.csv"))
    runs.write_json_atomic(
        os.path.join(workdir, "auc.json"),
        {"auc": auc, "models": len(rows), "seconds": seconds, "model_seconds": model_seconds},
    )
    lines = [
        "# Model-level detection over the zoo",
        "",
        "| detector | ROC AUC | 95% bootstrap interval | backdoored | clean | excluded |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, a in auc.items():
        interval = f"[{_fmt(a['low'])}, {_fmt(a['high'])}] ({a['valid_draws']} draws)"
        excluded = ", ".join(a["excluded"]) or "none"
        lines.append(
            f"| {name} | {_fmt(a['auc'])} | {interval} | {a['positives']} | {a['negatives']} "
            f"| {excluded} |"
        )
    lines += ["", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in columns) + " |" for r in rows]
    with open(os.path.join(workdir, "models.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        plot_roc(rows, auc, os.path.join(workdir, "roc.png"))
    except ImportError:  # matplotlib is the `plot` extra
        logging.warning("matplotlib is not installed: no roc.png")


def plot_roc(rows: list[dict], auc: dict[str, dict], path: str) -> None:
    """Each detector's ROC curve over the zoo's models, its AUC and interval in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    is_positive = np.array([r["backdoored"] for r in rows])
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for name, a in auc.items():
        fpr, tpr = roc_curve(np.array([r[f"{name}_score"] for r in rows]), is_positive)
        label = f"{name}: AUC {_fmt(a['auc'])} [{_fmt(a['low'])}, {_fmt(a['high'])}]"
        ax.plot(fpr, tpr, marker="o", markersize=3, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false-positive rate (clean models flagged)")
    ax.set_ylabel("true-positive rate (backdoored models flagged)")
    ax.set_title(
        f"{int(is_positive.sum())} backdoored vs {int((~is_positive).sum())} clean models",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
