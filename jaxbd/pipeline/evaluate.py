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
from typing import Any

import ml_collections

from jaxbd import attacks, files, rng
from jaxbd.pipeline.stages import engine, setup
from jaxbd.pipeline.stages import source as source_lib
from jaxbd.pipeline.stages.test_metrics import make_evaluate_fn
from jaxbd.settings import ConfigError


def run(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Evaluates the model of `config.source`; returns (and optionally writes) the metrics.

    Raises:
        ConfigError: for a missing or unfinished source, an unknown arm or attack.
    """
    src = source_lib.open_source(
        config.get("source"), arm=config.source_arm, runtime=config.runtime
    )
    exp = src.experiment
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
    variables = source_lib.restore_model(src, trainer, splits.train.image_shape)
    result = {
        **make_evaluate_fn(trainer, splits.test, triggered)(variables),
        "source": src.path,
        "model": src.model,
        "attack": attack.name,
        "attack_description": attack.description,
        "num_test": len(splits.test),
        "num_test_triggered_eligible": int(triggered.eligible.sum()),
    }
    if config.get("output"):
        files.write_json(config.output, result)
    return result
