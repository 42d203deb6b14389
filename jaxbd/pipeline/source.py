"""The source stage: a finished run read back — its settings, and its trained model.

Pipelines that start from a trained run (defend, evaluate, detect) read it here. The run is
only read: nothing in its directory is written, and its configuration rebuilds the same
experiment (`ExperimentSettings`), so the setup stage reproduces its poisoned data and
triggered test set from the same streams.

A source is a finished `scripts/train.py` run (models: its "dense" arm, or its "pruned" arm
when it has one) or a finished `scripts/defend.py` run (model: the one the defense
returned, with the defense's own source run's settings).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections

from jaxbd.defenses.base import Variables
from jaxbd.pipeline.config import ExperimentSettings
from jaxbd.runs.checkpoint import Checkpointer
from jaxbd.runs.rundir import CONFIG_FILE, SUMMARY_FILE
from jaxbd.settings import ConfigError
from jaxbd.train import CosineSchedule, Trainer

ARMS = {"dense": "dense", "pruned": "pruned"}
"""A training run's models -> the checkpointed phase holding each."""

DEFENDED = "defended"
"""The checkpoint folder (under `checkpoints/`) of the model a defense returned."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A finished run, read back.

    Attributes:
        path: the run directory given (a training run or a defense).
        training_run: the training run whose settings rebuild the data (== `path` unless
            `path` is a defense).
        model: "dense", "pruned" or "defended": which model `checkpoint` holds.
        checkpoint: the checkpoint folder of that model.
        experiment: the training run's settings, with the caller's runtime settings.
    """

    path: str
    training_run: str
    model: str
    checkpoint: str
    experiment: ExperimentSettings


def finished_run(path: str | None, field: str = "config.source") -> str:
    """`path`, absolute, if it is a finished jaxbd run directory.

    Raises:
        ConfigError: naming `field`, if it is missing, not a run directory, or unfinished.
    """
    if not path:
        raise ConfigError(f"{field}: a finished run directory is required")
    path = os.path.abspath(path)
    for name, what in ((CONFIG_FILE, "a jaxbd run directory"), (SUMMARY_FILE, "finished")):
        if not os.path.exists(os.path.join(path, name)):
            raise ConfigError(
                f"{field}: {path} is not {what} (no {name}); give a finished "
                "scripts/train.py or scripts/defend.py run"
            )
    return path


def read_config(path: str) -> dict:
    """A run directory's `config.json`."""
    with open(os.path.join(path, CONFIG_FILE)) as f:
        return json.load(f)


def open_source(
    path: str | None,
    *,
    arm: str = "dense",
    runtime: ml_collections.ConfigDict | None = None,
    allow_defended: bool = True,
    field: str = "config.source",
) -> Source:
    """Reads a finished run's settings and locates its model.

    Args:
        path: the run directory.
        arm: for a training run, "dense" or "pruned".
        runtime: runtime settings of this invocation (device count, progress, ...) that
            replace the source's.
        allow_defended: accept a defense's directory (its returned model).
        field: the config field named in errors.

    Raises:
        ConfigError: for a missing or unfinished run, an unknown or absent arm.
    """
    path = finished_run(path, field)
    config = read_config(path)
    if "defense" in config and "source" in config:
        if not allow_defended:
            raise ConfigError(f"{field}: {path} is a defense; give a training run")
        training_run = finished_run(config["source"], f"the source of {path}")
        model, checkpoint = DEFENDED, os.path.join(path, "checkpoints", DEFENDED)
        config = read_config(training_run)
    else:
        if arm not in ARMS:
            raise ConfigError(f"{field}_arm: must be one of {sorted(ARMS)}, got {arm!r}")
        training_run, model = path, arm
        checkpoint = os.path.join(path, "checkpoints", ARMS[arm])
    if not os.path.isdir(checkpoint):
        raise ConfigError(
            f"{field}: {path} has no {model!r} checkpoint (a run without a pruned arm has only "
            "the dense model)"
        )
    experiment_config = ml_collections.ConfigDict(config)
    if runtime is not None:
        experiment_config.runtime.update(runtime.to_dict())
    return Source(
        path=path,
        training_run=training_run,
        model=model,
        checkpoint=checkpoint,
        experiment=ExperimentSettings.from_config(experiment_config),
    )


def restore_model(source: Source, trainer: Trainer, image_shape) -> Variables:
    """The source's model (parameters, BatchNorm statistics, pruning mask); read only."""
    state = trainer.init_state(
        jax.random.key(0), image_shape, CosineSchedule.create(1.0, 1), rng=jax.random.key(0)
    )
    if source.model == DEFENDED:
        template = {"model": Variables(state.params, state.batch_stats, state.mask)}
    else:
        template = {"state": state}
    checkpointer = Checkpointer(source.checkpoint)
    try:
        latest = checkpointer.latest_step()
        if latest is None:
            raise ConfigError(f"config.source: {source.checkpoint} holds no checkpoint")
        restored, _ = checkpointer.restore(latest, template)
    finally:
        checkpointer.close()
    if source.model == DEFENDED:
        return restored["model"]
    state = restored["state"]
    return Variables(params=state.params, batch_stats=state.batch_stats, mask=state.mask)
