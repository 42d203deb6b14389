"""An experiment configuration as settings: every section validated before any work starts.

`ExperimentSettings.from_config(config)` turns the `ml_collections` configuration (see
`jaxbd.configs.base_config`) into the frozen settings of each section — each validates
itself next to its defaults (`DataSettings`, `AttackSettings`, `SelectSettings`,
`IMPSettings`, `ModelSettings`, `TrainSettings`, `RuntimeSettings`) — and checks what spans
sections. Checks that need the data (the target class against the class count, batch sizes
against the training set) are the setup stage's (`jaxbd.pipeline.stages.setup.check`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from jaxbd import settings as settings_lib
from jaxbd.attacks import AttackSettings
from jaxbd.data import DataSettings
from jaxbd.models.settings import ModelSettings
from jaxbd.prune import IMPSettings
from jaxbd.select import SelectSettings
from jaxbd.settings import ConfigError
from jaxbd.train.settings import RuntimeSettings, TrainSettings


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentSettings:
    """One experiment's settings, section by section.

    Attributes:
        seed: every random stream derives from it (`jaxbd.rng.stream`).
        data, attack, select, model, train, runtime: the sections' settings.
        prune: the pruned arm's IMP settings, or None when `config.prune.rounds` is 0 (no
            pruned arm); `final_epochs` defaults to `train.epochs`.
        config: the configuration as a plain dict, as `config.json` records it (what
            `jaxbd.runs.identity` compares).
    """

    seed: int
    data: DataSettings
    attack: AttackSettings
    select: SelectSettings
    prune: IMPSettings | None
    model: ModelSettings
    train: TrainSettings
    runtime: RuntimeSettings
    config: Mapping[str, Any] = dataclasses.field(compare=False, repr=False)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> ExperimentSettings:
        """Validates every section of `config`.

        Raises:
            ConfigError: naming the offending field, its value and what is allowed.
        """
        if not isinstance(config.get("seed"), int) or isinstance(config.get("seed"), bool):
            raise ConfigError(f"config.seed: must be an integer, got {config.get('seed')!r}")
        train = settings_lib.from_config(TrainSettings, config.train, "config.train")
        return cls(
            seed=config.seed,
            data=settings_lib.from_config(DataSettings, config.data, "config.data"),
            attack=AttackSettings.from_config(config.attack, "config.attack"),
            select=settings_lib.from_config(SelectSettings, config.select, "config.select"),
            prune=_prune_settings(config.prune, train),
            model=settings_lib.from_config(ModelSettings, config.model, "config.model"),
            train=train,
            runtime=settings_lib.from_config(RuntimeSettings, config.runtime, "config.runtime"),
            config=config.to_dict(),
        )


def _prune_settings(section: ml_collections.ConfigDict, train: TrainSettings) -> IMPSettings | None:
    """`config.prune` as IMP settings (None: rounds = 0, no pruned arm)."""
    values = settings_lib.as_dict(section)
    rounds = values.get("rounds", IMPSettings.rounds)
    if not isinstance(rounds, int) or rounds < 0:
        raise ConfigError(f"config.prune.rounds: must be >= 0 (0: no pruned arm), got {rounds!r}")
    if rounds == 0:
        return None
    if values.get("final_epochs") is None:
        values["final_epochs"] = train.epochs
    settings = settings_lib.from_config(IMPSettings, values, "config.prune")
    for field, epochs in (
        ("round_epochs", settings.round_epochs),
        ("final_epochs", settings.final_epochs),
    ):
        if not train.warmup_epochs < epochs:
            raise ConfigError(
                f"config.train.warmup_epochs: must be below prune.{field}={epochs} (the pruned "
                f"arm's schedules warm up too), got {train.warmup_epochs}"
            )
    return settings
