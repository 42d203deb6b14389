"""The detection pipeline: run a detector on a finished run's model with the defender's data.

`run(config, workdir)` is what `scripts/detect.py` calls (`configs/detect.py`):

1. the source (a finished `scripts/train.py` run — its dense or pruned model — or a finished
   `scripts/defend.py` run) is read back (`jaxbd.pipeline.stages.source`) and its poisoned training
   set and triggered test set rebuilt from the same streams; the source is never written;
2. the defender's data: the clean subset `scripts/defend.py` draws too ("defender" stream);
3. the detector named by `config.detector.name` (a key of `jaxbd.defenses.DETECTORS`) runs
   on a `DetectorContext`; an input detector judges the clean and the triggered test
   images, and the pipeline adds its FRR, FAR and ROC AUC (`pipeline.detect_figures`);
4. `summary.json` (with the examined model's test metrics, `model_test`, for the report),
   `scores.npz`, figures, `config.json`, `metrics.jsonl`.

Every decision a detector makes reads the defender's data only; the test set is for
reporting. Adding a detector: docs/architecture.md.
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
from absl import logging

from jaxbd import defenses, rng, runs
from jaxbd.data import augment
from jaxbd.defenses.base import Variables
from jaxbd.files import write_npz
from jaxbd.pipeline.detect_figures import (
    DETECTORS,
    Detection,
    Detector,
    DetectorContext,
    judged_inputs,
    settings_config,
    with_test_figures,
)
from jaxbd.pipeline.stages import engine
from jaxbd.pipeline.stages import source as source_lib
from jaxbd.pipeline.stages.experiment_settings import ExperimentSettings
from jaxbd.settings import ConfigError, from_config
from jaxbd.train import Trainer
from jaxbd.types import jsonable

__all__ = [
    "DETECTORS",
    "PIPELINE_KEYS",
    "Detection",
    "Detector",
    "DetectorContext",
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
    """A detection run's settings (validated; see `jaxbd.pipeline.defaults.detect_config`)."""

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
        config: a detection configuration (see `jaxbd.pipeline.defaults.detect_config`).
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
        ctx = DetectorContext(
            model=variables,
            logits_fn=model_logits_fn(trainer, variables),
            trainer=trainer,
            defender=defender,
            key=rng.stream(s.seed, f"detect/{s.name}"),
            num_classes=splits.train.num_classes,
            inputs=judged_inputs(stage) if s.detector.kind == "input" else {},
            make_trainer=_trainer_maker(exp, splits.train.num_classes),
        )
        # The examined model's test metrics, for the report only (nothing decides on them):
        # they make the detection's summary readable without its source at hand.
        model_test = rebuilt.evaluate_fn(trainer)(variables)
        detection = s.detector.detect(ctx, s.hparams)
        found, plots = with_test_figures(s.name, detection)
        clash = sorted(set(found) & set(PIPELINE_KEYS))
        if clash:
            raise ValueError(f"detector {s.name!r} reuses the pipeline's summary keys {clash}")
        if detection.arrays:
            write_npz(rundir.file(SCORES_FILE), detection.arrays)
        _plot(rundir, plots)
        summary = {
            "detector": s.name,
            "hparams": jsonable(dataclasses.asdict(s.hparams)),
            "source": s.source.path,
            "source_model": s.source.model,
            "attack": exp.attack.name,
            "target": stage.attack.target,
            "model_test": model_test,
            **jsonable(found),
            "defender_examples": len(defender),
            "defender_tune": len(defender.tune),
            "defender_val": len(defender.val),
            "resumed": resumed,
            "wall_seconds": time.perf_counter() - started,
        }
        rundir.log_once({"event": "end", **jsonable(found)}, key=("event",))
        rundir.write_summary(summary)
    finally:
        rundir.close()
    return summary


def _trainer_maker(exp: ExperimentSettings, num_classes: int):
    """`make_trainer(batch_size, momentum, weight_decay)`: the source's engine with another
    optimizer, as `scripts/defend.py` builds a repair's (CTI's reference repair)."""

    def make(batch_size: int, momentum: float, weight_decay: float) -> Trainer:
        train = dataclasses.replace(
            exp.train, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay
        )
        return engine.make_trainer(dataclasses.replace(exp, train=train), num_classes)

    return make


def _plot(rundir: runs.RunDir, plots: Mapping[str, Callable[[str], None]]) -> None:
    for name, draw in plots.items():
        try:
            draw(rundir.file(name))
        except ImportError:  # matplotlib is the `plot` extra
            logging.warning("matplotlib is not installed: no %s", name)
