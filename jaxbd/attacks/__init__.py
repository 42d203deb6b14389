"""Backdoor attacks: pure, jittable transforms over image batches, and dataset poisoning.

`ATTACKS` maps a registry name to its factory; `make_attack` builds one from the experiment
configuration (`config.attack`, see `jaxbd.configs`).
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from jaxbd.attacks.badnets import badnets
from jaxbd.attacks.base import Attack, AttackFn
from jaxbd.attacks.poison import (
    PoisonedDataset,
    TriggeredTestSet,
    poison_dataset,
    triggered_test_set,
)

ATTACKS: dict[str, Callable[..., Attack]] = {
    "badnets": badnets,
}


def make_attack(attack_config: ml_collections.ConfigDict) -> Attack:
    """Builds the attack an experiment configuration names.

    Args:
        attack_config: a ConfigDict with `name` (a key of `ATTACKS`), `target` (the target
            class) and, optionally, a sub-dict named after the attack holding the factory's
            other keyword arguments (e.g. `attack_config.badnets.size`); a missing sub-dict
            or field takes the factory's default. Other fields (`fraction`,
            `exclude_target`, ...) belong to `poison_dataset` and are ignored here. Lists
            (as a command-line override produces) are converted to tuples.

    Returns:
        The attack.

    Raises:
        ValueError: for an unknown attack name, or hyper-parameters the factory rejects.
    """
    name = attack_config.name
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; registered attacks: {sorted(ATTACKS)}")
    hparams = attack_config.get(name)
    kwargs = {} if hparams is None else _to_kwargs(hparams)
    return ATTACKS[name](target=attack_config.target, **kwargs)


def _to_kwargs(hparams) -> dict:
    items = hparams.to_dict() if hasattr(hparams, "to_dict") else dict(hparams)
    return {k: _tuplify(v) for k, v in items.items()}


def _tuplify(value):
    if isinstance(value, list | tuple):
        return tuple(_tuplify(v) for v in value)
    return value


__all__ = [
    "ATTACKS",
    "Attack",
    "AttackFn",
    "PoisonedDataset",
    "TriggeredTestSet",
    "badnets",
    "make_attack",
    "poison_dataset",
    "triggered_test_set",
]
