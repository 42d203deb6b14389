"""Evaluate a finished run's model — trained or defended — on its own trigger or another.

`run(config)` is what `scripts/evaluate.py` calls (`configs/evaluate.py`). `config.source`
is a finished training run (its dense or pruned model, `config.source_arm`) or a finished
defense (`scripts/defend.py`: the model it returned). The test set is rebuilt from the
training run's configuration (same data); the trigger is the training run's attack unless
`config.attack.name` names another (its hyper-parameters from `config.attack.<name>`,
defaults otherwise), applied to the test set with the run's "test_trigger" stream. Nothing is
written unless `config.output` names a JSON file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections

from jaxbd import attacks, rng, runs
from jaxbd.defenses.base import Variables
from jaxbd.pipeline import engine, setup
from jaxbd.pipeline.config import ExperimentSettings
from jaxbd.pipeline.defend import ARMS, DEFENDED
from jaxbd.pipeline.evaluate import make_evaluate_fn
from jaxbd.runs.checkpoint import Checkpointer
from jaxbd.runs.rundir import CONFIG_FILE, SUMMARY_FILE
from jaxbd.settings import ConfigError
from jaxbd.train import CosineSchedule


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Evaluates the model of `config.source`; returns (and optionally writes) the metrics.

    Raises:
        ConfigError: for a missing or unfinished source, an unknown arm or attack.
    """
    source = _finished(config.get("source"), "config.source")
    with open(os.path.join(source, CONFIG_FILE)) as f:
        source_config = json.load(f)
    defense = None
    if "defense" in source_config and "source" in source_config:  # a finished defense
        defense, source = source, _finished(source_config["source"], "the defense's source")
        arm = source_config.get("source_arm", "dense")
        with open(os.path.join(source, CONFIG_FILE)) as f:
            source_config = json.load(f)
    else:
        arm = config.source_arm
        if arm not in ARMS:
            raise ConfigError(f"config.source_arm: must be one of {sorted(ARMS)}, got {arm!r}")
    experiment_config = ml_collections.ConfigDict(source_config)
    experiment_config.runtime.update(config.runtime.to_dict())
    exp = ExperimentSettings.from_config(experiment_config)
    attack_settings = exp.attack
    override = config.attack.get("name")
    if override is not None:
        section = ml_collections.ConfigDict(config.attack.to_dict())
        section.target = exp.attack.target if section.get("target") is None else section.target
        for key in ("fraction", "exclude_target", "surrogate_epochs"):
            section[key] = getattr(exp.attack, key)
        attack_settings = attacks.AttackSettings.from_config(section, "config.attack")
    exp = dataclasses.replace(exp, attack=attack_settings)

    splits = setup.load_data(exp)
    trainer = engine.make_trainer(exp, splits.train.num_classes)
    try:
        attack = setup.make_attack(exp, trainer, splits.train, logits_fn=setup.stand_in_surrogate)
    except ValueError as e:
        raise ConfigError(f"config.attack.{attack_settings.name}: {e}") from None
    triggered = attacks.triggered_test_set(
        rng.stream(exp.seed, "test_trigger"), splits.test, attack
    )
    if defense is None:
        variables = _restore(os.path.join(source, "checkpoints", ARMS[arm]), trainer, splits)
    else:
        folder = os.path.join(defense, "checkpoints", DEFENDED)
        variables = _restore_defended(folder, trainer, splits)
    result = {
        **make_evaluate_fn(trainer, splits.test, triggered)(variables),
        "source": defense or source,
        "model": "defended" if defense else arm,
        "attack": attack.name,
        "attack_description": attack.description,
        "num_test": len(splits.test),
        "num_test_triggered_eligible": int(triggered.eligible.sum()),
    }
    if config.get("output"):
        runs.write_json_atomic(config.output, result)
    return result


def _finished(path, field: str) -> str:
    if not path:
        raise ConfigError(f"{field}: a finished run directory is required")
    path = os.path.abspath(path)
    for name, what in ((CONFIG_FILE, "a jaxbd run directory"), (SUMMARY_FILE, "finished")):
        if not os.path.exists(os.path.join(path, name)):
            raise ConfigError(f"{field}: {path} is not {what} (no {name})")
    return path


def _template(trainer, splits):
    return trainer.init_state(
        jax.random.key(0),
        splits.train.image_shape,
        CosineSchedule.create(1.0, 1),
        rng=jax.random.key(0),
    )


def _restore(folder, trainer, splits) -> Variables:
    state = _read(folder, {"state": _template(trainer, splits)})["state"]
    return Variables(state.params, state.batch_stats, state.mask)


def _restore_defended(folder, trainer, splits) -> Variables:
    state = _template(trainer, splits)
    template = {"model": Variables(state.params, state.batch_stats, state.mask)}
    return _read(folder, template)["model"]


def _read(folder, template):
    if not os.path.isdir(folder):
        raise ConfigError(f"config.source: no checkpoint folder {folder}")
    checkpointer = Checkpointer(folder)
    try:
        latest = checkpointer.latest_step()
        if latest is None:
            raise ConfigError(f"config.source: {folder} holds no checkpoint")
        restored, _ = checkpointer.restore(latest, template)
    finally:
        checkpointer.close()
    return restored
