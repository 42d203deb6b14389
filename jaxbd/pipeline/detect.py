"""The detection pipeline: run a detector on a finished run's model with the defender's data.

`run(config, workdir)` is what `scripts/detect.py` calls (`configs/detect.py`):

1. the source (`config.source`: a finished `scripts/train.py` run — its dense or pruned
   model — or a finished `scripts/defend.py` run — the model it returned) is read back with
   `jaxbd.pipeline.source`; its training run's configuration rebuilds, through the setup
   stage (`jaxbd.pipeline.setup`), the same poisoned training set and triggered test set
   from the same streams. The source directory is only read, never written (the detection's
   own directory may live inside it, `<source>/detections/<name>` by default);
2. the defender's data: the small clean subset of the training images that the defense
   pipeline draws too (`jaxbd.defenses.defender_data`, the "defender" stream of
   `config.seed`), split into tuning and held-out parts;
3. the detector named by `config.detector.name` (a key of `DETECTORS`) runs on a
   `DetectContext` and returns a `Detection`: summary fields, optional arrays
   (`scores.npz`) and optional figures (PNG);
4. `summary.json` (which marks the detection finished; with the examined model's test
   metrics, `model_test`, for the report), `config.json`, `metrics.jsonl`.

Every decision a detector makes (a threshold, a flagged class) reads the defender's data
only; the test set is for reporting.

The detectors (`jaxbd.pipeline.detectors.DETECTORS`): `strip`, `neural_cleanse`, `cti`;
`jaxbd.pipeline.zoo` measures the model-level ones' ROC AUC over many models.

## Adding a detector

Register a `Detector` in `jaxbd.pipeline.detectors.DETECTORS`:

    DETECTORS["my_detector"] = Detector(
        settings=MySettings,  # a frozen, self-validating dataclass (`jaxbd.settings.require`)
        detect=my_detect,     # (ctx: DetectContext, settings: MySettings) -> Detection
        check=my_check,       # optional (settings, defender: DefenderData) -> None
    )

`settings` is built by `jaxbd.settings.from_config` from `config.detector.my_detector`,
whose defaults `jaxbd.configs.detect_config` takes from the dataclass (`settings_config`),
so nothing else is edited to make `--config.detector.name=my_detector` work. `check` runs
before the workdir is claimed (raise `ConfigError` naming the field, e.g. more overlays than
tuning images). `detect` may use `ctx.logits_fn` (jittable, uint8 images -> logits),
`ctx.trainer` and `ctx.model` (e.g. `trainer.predict_variables`, or the module for
features and gradients), `ctx.defender`, `ctx.stage` (test set, triggered test set,
poisoned training set) and `ctx.key` (the detector's own stream, "detect/<name>"). Its
`Detection.summary` must be JSON-able and must not reuse the pipeline's own summary keys
(`PIPELINE_KEYS`); a model-level detector reports e.g. `{"score": ..., "flagged": ...}`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxbd import defenses, rng, runs
from jaxbd.data import augment
from jaxbd.defenses.base import Variables, jsonable
from jaxbd.pipeline import source as source_lib
from jaxbd.pipeline.config import ExperimentSettings
from jaxbd.pipeline.detectors import (
    DETECTORS,
    DetectContext,
    Detection,
    Detector,
    settings_config,
)
from jaxbd.settings import ConfigError, from_config
from jaxbd.train import Trainer

__all__ = [
    "DETECTORS",
    "PIPELINE_KEYS",
    "DetectContext",
    "Detection",
    "Detector",
    "default_workdir",
    "run",
    "settings_config",
    "validate",
]

SCORES_FILE = "scores.npz"


PIPELINE_KEYS = (
    "detector",
    "hparams",
    "source",
    "source_model",
    "attack",
    "target",
    "defender_examples",
    "defender_tune",
    "defender_val",
    "model_test",
    "resumed",
    "wall_seconds",
)
"""Summary keys the pipeline writes itself; a detector's summary may not use them."""


# -- the pipeline --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DetectSettings:
    """A detection run's settings (validated; see `jaxbd.configs.detect_config`)."""

    source: source_lib.Source
    seed: int
    defender: defenses.DefenderDataSettings
    name: str
    detector: Detector
    hparams: Any
    experiment: ExperimentSettings  # the source's training run's, with this run's runtime


def validate(config: ml_collections.ConfigDict) -> DetectSettings:
    """Checks the detection config and the source before anything is written.

    Raises:
        ConfigError: for a missing or unfinished source, an unknown detector or arm, bad
            hyper-parameters or defender settings.
    """
    src = source_lib.open_source(
        config.get("source"), arm=config.source_arm, runtime=config.runtime
    )
    name = config.detector.name
    if name not in DETECTORS:
        raise ConfigError(f"config.detector.name: must be one of {sorted(DETECTORS)}, got {name!r}")
    detector = DETECTORS[name]
    return DetectSettings(
        source=src,
        seed=config.seed,
        defender=from_config(defenses.DefenderDataSettings, config.defender, "config.defender"),
        name=name,
        detector=detector,
        hparams=from_config(
            detector.settings, config.detector.get(name), f"config.detector.{name}"
        ),
        experiment=src.experiment,
    )


def default_workdir(config: ml_collections.ConfigDict) -> str:
    """`<source>/detections/<detector>` (`_pruned` appended for a training run's pruned arm)."""
    suffix = "" if config.source_arm == "dense" else f"_{config.source_arm}"
    return os.path.join(config.source, "detections", f"{config.detector.name}{suffix}")


def model_logits_fn(trainer: Trainer, variables: Variables) -> jax.tree_util.Partial:
    """`images uint8[B, H, W, 3] -> logits float32[B, C]` of a model in inference mode, as a
    `jax.tree_util.Partial` whose leaves are the variables (traced, not compiled in)."""
    apply = functools.partial(_apply_logits, trainer.model, trainer.mean, trainer.std)
    return jax.tree_util.Partial(apply, variables.params, variables.batch_stats)


def _apply_logits(model, mean, std, params, batch_stats, images):
    x = augment.normalize(images, mean, std)
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
    return logits.astype(jnp.float32)


def run(
    config: ml_collections.ConfigDict,
    workdir: str | None = None,
    *,
    rebuilt: source_lib.Rebuilt | None = None,
) -> dict[str, Any]:
    """Runs one detector on a finished run's model and returns its summary.

    Args:
        config: a detection configuration (see `jaxbd.configs.detect_config`).
        workdir: where the detection writes (default `default_workdir(config)`); created if
            missing; an unfinished detection of the same configuration is redone (detectors
            are fast; `summary.json` marks a finished one), a finished or different one is
            refused.
        rebuilt: the source's data and model, already rebuilt (`source.rebuild`) by a caller
            that examines one model several times (a grid); must be of `config.source`.

    Returns:
        The summary also written to `workdir/summary.json`.

    Raises:
        ConfigError: bad input, before anything is written.
        RunDirError: the workdir holds a finished detection or another run.
    """
    started = time.perf_counter()
    s = validate(config)
    workdir = workdir or default_workdir(config)
    rundir = runs.RunDir(workdir)
    rundir.check_not_finished()
    if rebuilt is not None and (
        rebuilt.source.path != s.source.path or rebuilt.source.model != s.source.model
    ):
        raise ValueError(
            f"rebuilt holds {rebuilt.source.path} ({rebuilt.source.model}), but the config "
            f"examines {s.source.path} ({s.source.model})"
        )
    exp = s.experiment
    claimed: list[bool] = []

    def claim() -> runs.RunDir:
        if not claimed:
            resumed = rundir.open(config.to_dict())
            rundir.log({"event": "start", "resumed": resumed, "time": time.time()})
            claimed.append(resumed)
        return rundir

    try:
        # Only an attack that needs a trained surrogate writes while the data are rebuilt
        # (its phase, into this directory), so otherwise the defender's draw and the
        # detector's own checks come before the directory is claimed.
        if rebuilt is None:
            rebuilt = source_lib.rebuild(s.source, rundir=claim)
        splits, trainer, stage = rebuilt.splits, rebuilt.trainer, rebuilt.stage
        try:
            defender = defenses.defender_data(
                rng.stream(s.seed, "defender"), splits.train, stage.poisoned.is_poison, s.defender
            )
        except ValueError as e:
            raise ConfigError(f"config.defender: {e}") from None
        if s.detector.check is not None:
            s.detector.check(s.hparams, defender)
        claim()
        resumed = claimed[0]
        variables = rebuilt.model_copy()
        logging.info(
            "defender: %d tuning + %d held-out clean images", len(defender.tune), len(defender.val)
        )
        ctx = DetectContext(
            model=variables,
            logits_fn=model_logits_fn(trainer, variables),
            trainer=trainer,
            defender=defender,
            stage=stage,
            key=rng.stream(s.seed, f"detect/{s.name}"),
            num_classes=splits.train.num_classes,
            experiment=exp,
        )
        # The examined model's test metrics, for the report only (nothing decides on them):
        # they make the detection's summary readable without its source at hand.
        model_test = rebuilt.evaluate_fn(trainer)(variables)
        detection = s.detector.detect(ctx, s.hparams)
        clash = sorted(set(detection.summary) & set(PIPELINE_KEYS))
        if clash:
            raise ValueError(f"detector {s.name!r} reuses the pipeline's summary keys {clash}")
        if detection.arrays:
            _write_npz(rundir.file(SCORES_FILE), detection.arrays)
        _plot(rundir, detection.plots)
        summary = {
            "detector": s.name,
            "hparams": jsonable(dataclasses.asdict(s.hparams)),
            "source": s.source.path,
            "source_model": s.source.model,
            "attack": exp.attack.name,
            "target": stage.attack.target,
            "model_test": model_test,
            **jsonable(dict(detection.summary)),
            "defender_examples": len(defender),
            "defender_tune": len(defender.tune),
            "defender_val": len(defender.val),
            "resumed": resumed,
            "wall_seconds": time.perf_counter() - started,
        }
        rundir.log_once({"event": "end", **jsonable(dict(detection.summary))}, key=("event",))
        rundir.write_summary(summary)
    finally:
        rundir.close()
    return summary


def _write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """`np.savez` to a temporary file renamed into place (a reader never sees a torn file)."""
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)


def _plot(rundir: runs.RunDir, plots: Mapping[str, Callable[[str], None]]) -> None:
    for name, draw in plots.items():
        try:
            draw(rundir.file(name))
        except ImportError:  # matplotlib is the `plot` extra
            logging.warning("matplotlib is not installed: no %s", name)
