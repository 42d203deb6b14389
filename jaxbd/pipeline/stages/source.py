"""The source stage: a finished run read back — its settings, and its trained model.

Pipelines that start from a trained run (defend, evaluate, detect) read it here. The run is
only read: nothing in its directory is written, and its configuration rebuilds the same
experiment (`ExperimentSettings`), so the setup stage reproduces its poisoned data and
triggered test set from the same streams.

A source is a finished `scripts/train.py` run (models: its "dense" arm, or its "pruned" arm
when it has one) or a finished `scripts/defend.py` run (model: the one the defense
returned, with the defense's own source run's settings).

`rebuild(source, rundir=...)` turns a source into what every defense or detector of its model
uses (`Rebuilt`): the data loaded and poisoned again by the setup stage, the model restored,
the test sets on the devices. A grid builds it once per trained model and hands it to each
of that model's defenses (`jaxbd.pipeline.grid.sweep`), so they share the data on the devices and
the compiled functions of one engine instead of rebuilding them per defense.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import jax
import ml_collections

from jaxbd.data import DataSplits
from jaxbd.defenses.base import Variables, copy_tree
from jaxbd.pipeline.stages import engine, setup
from jaxbd.pipeline.stages.experiment_settings import ExperimentSettings
from jaxbd.pipeline.stages.test_metrics import EvaluateFn, evaluate
from jaxbd.runs.checkpoint import Checkpointer
from jaxbd.runs.rundir import CONFIG_FILE, SUMMARY_FILE, RunDir
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


@dataclasses.dataclass(frozen=True)
class Rebuilt:
    """A finished run's data and model, rebuilt once: what every defense or detector of that
    model reads (`rebuild`).

    Attributes:
        source: the run read back.
        splits: the clean train and test sets.
        trainer: the source's engine (its model, mesh and inference batch size).
        stage: the setup stage's output: the attack, the poisoned training set (the
            defender draws only unpoisoned images) and the triggered test set.
        model: the trained model's variables. Shared: use `model_copy()` for anything
            that may donate or change arrays.
        test_images: the clean test images, uint8[M, H, W, 3], on the trainer's devices.
        triggered_images: the triggered test images, uint8[M, H, W, 3], on the devices.
    """

    source: Source
    splits: DataSplits
    trainer: Trainer
    stage: setup.Setup
    model: Variables
    test_images: jax.Array
    triggered_images: jax.Array

    def model_copy(self) -> Variables:
        """A fresh copy of the model (a tuning loop donates its state's buffers)."""
        return Variables(
            copy_tree(self.model.params),
            copy_tree(self.model.batch_stats),
            copy_tree(self.model.mask),
        )

    def evaluate_fn(self, trainer: Trainer) -> EvaluateFn:
        """`state -> test metrics` computed with `trainer` (any engine on the same devices,
        e.g. one with a repair's optimizer), on the test sets already on the devices."""
        split, triggered = self.splits.test, self.stage.triggered

        def evaluate_fn(state) -> dict[str, float]:
            return evaluate(
                trainer, state, self.test_images, split.labels, triggered, self.triggered_images
            )

        return evaluate_fn


def rebuild(source: Source, *, rundir: Callable[[], RunDir]) -> Rebuilt:
    """Rebuilds a finished run's data (same streams, same poisons) and restores its model.

    Args:
        source: the run (`open_source`).
        rundir: returns the claimed run directory where an attack that needs a trained
            surrogate checkpoints it (phase "surrogate"); called only for such an attack, so
            for every other one nothing is written and a caller can still refuse bad input
            before it claims its directory.

    Returns:
        The rebuilt data and model.
    """
    exp = source.experiment
    splits = setup.load_data(exp)
    trainer = engine.make_trainer(exp, splits.train.num_classes)
    attack = setup.check(exp, trainer, splits)
    directory = rundir() if attack is None else None
    stage = setup.build(exp, trainer, splits, directory, attack)
    return Rebuilt(
        source=source,
        splits=splits,
        trainer=trainer,
        stage=stage,
        model=restore_model(source, trainer, splits.train.image_shape),
        test_images=trainer.replicate(splits.test.images),
        triggered_images=trainer.replicate(stage.triggered.images),
    )
