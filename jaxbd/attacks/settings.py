"""The `config.attack` section as settings: which attack, how much poison, which target."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jaxbd import settings as settings_lib
from jaxbd.attacks.registry import ATTACKS
from jaxbd.settings import require


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackSettings:
    """What to poison with, and how much.

    Attributes:
        name: a key of `ATTACKS`.
        fraction: the poisoned fraction of the training set, in [0, 1].
        target: the target class (checked against the dataset's class count when the data
            is loaded).
        exclude_target: never poison target-class images.
        surrogate_epochs: epochs of the surrogate model, for attacks whose recipe needs one
            (trained with the `train` section's settings).
        hparams: per-attack factory keyword arguments, `{attack name: {argument: value}}`
            (the `config.attack.<name>` sub-sections); missing ones take the defaults.
    """

    name: str = "badnets"
    fraction: float = 0.02
    target: int = 0
    exclude_target: bool = False
    surrogate_epochs: int = 10
    hparams: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        require(self.name in ATTACKS, "name", f"must be one of {sorted(ATTACKS)}", self.name)
        require(0.0 <= self.fraction <= 1.0, "fraction", "must be in [0, 1]", self.fraction)
        require(
            isinstance(self.target, int) and self.target >= 0, "target", "must be >= 0", self.target
        )
        require(
            self.surrogate_epochs >= 1, "surrogate_epochs", "must be >= 1", self.surrogate_epochs
        )
        unknown = sorted(set(self.hparams) - set(ATTACKS))
        require(not unknown, "hparams", f"unknown attack(s) {unknown}")

    @classmethod
    def from_config(cls, section, prefix: str = "config.attack") -> AttackSettings:
        """From the `config.attack` section, whose sub-sections named after attacks hold
        their hyper-parameters.

        Raises:
            ConfigError: naming the offending field.
        """
        values = settings_lib.as_dict(section)
        hparams = {name: values.pop(name) for name in list(values) if name in ATTACKS}
        return settings_lib.from_config(cls, {**values, "hparams": hparams}, prefix)
