"""The configurations of a grid's runs, derived from the grid's configuration: each cell's
experiment, each defense run's (`scripts/defend.py`'s) and detection run's
(`scripts/detect.py`'s), composed from the pipelines' defaults (`jaxbd.pipeline.defaults`);
and the checks of the defender's budgets that need the data.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np

from jaxbd import attacks, defenses
from jaxbd.defenses.registry import hparams_config, make_repair
from jaxbd.pipeline import defaults
from jaxbd.pipeline.detect import DETECTORS
from jaxbd.pipeline.grid.axes import FULL, Budget, Cell, Defense, Grid
from jaxbd.settings import ConfigError, from_config


def cell_config(
    config: ml_collections.ConfigDict, grid: Grid, cell: Cell, pretrain_dir: str
) -> ml_collections.ConfigDict:
    """The experiment configuration of one cell (the sweep section removed)."""
    c = copy.deepcopy(config)
    with c.unlocked():  # configs from the command line (config_flags) are locked
        del c["sweep"]
    c.seed = cell.seed
    if grid.per_attack:
        c.attack.name = cell.attack
    c.select.name = None if cell.method == FULL else cell.method
    c.select.pretrain_dir = pretrain_dir
    return c


def defense_config(
    config: ml_collections.ConfigDict,
    grid: Grid,
    cell: Cell,
    defense: Defense,
    budget: Budget,
    source: str,
) -> ml_collections.ConfigDict:
    """The `scripts/defend.py` configuration of one defense run.

    The defender's streams use the cell's seed, so replicate seeds redraw the defender's
    images too. Only the repair's own section is kept under `defense`, so the run's
    identity does not depend on which other repairs are registered.

    Args:
        config: the grid's configuration.
        grid: the validated grid.
        cell: the defended cell.
        defense: which defense.
        budget: the defender's data.
        source: the cell's run directory.
    """
    sweep = sweep_with_defaults(config)
    d = defaults.defend_config(repairs=())
    d.source = source
    d.source_arm = grid.source_arm
    d.seed = cell.seed
    d.defender.fraction = budget.fraction
    d.defender.per_class = budget.per_class
    d.defender.val_fraction = sweep.defender.val_fraction
    d.defender.trigger_knowledge = bool(sweep.defender.trigger_knowledge)
    common = sweep.defense
    d.defense.name = defense.name
    d.defense.steps = repair_steps(sweep, defense)
    d.defense.eval_every = common.eval_every
    d.defense.delta = common.delta
    d.defense.patience = common.patience
    d.defense[defense.name] = repair_hparams(sweep, defense)
    with d.unlocked():
        d.runtime = copy.deepcopy(config.runtime)
    return d


def repair_hparams(sweep: ml_collections.ConfigDict, defense: Defense) -> ml_collections.ConfigDict:
    """A defense's hyper-parameters: its repair class's defaults, `sweep.defense.<name>` on
    top, then the variant's own overrides (`name@field=value`)."""
    section = hparams_config(defenses.REPAIRS[defense.name])
    if defense.name in sweep.defense:
        section.update(sweep.defense[defense.name].to_dict())
    for field, value in defense.overrides:
        section[field] = value
    return section


def repair_steps(sweep: ml_collections.ConfigDict, defense: Defense) -> int | None:
    """A defense's step budget: the grid-wide `sweep.defense.steps`, except that a data-free
    repair keeps its own (CLP: no steps)."""
    return None if defense.data_free else sweep.defense.steps


def detect_config(
    config: ml_collections.ConfigDict,
    grid: Grid,
    cell: Cell,
    detector: str,
    budget: Budget,
    source: str,
) -> ml_collections.ConfigDict:
    """The `scripts/detect.py` configuration of one detection run (the defender's streams of
    the cell's seed, as its defenses draw them; only the detector's own section kept)."""
    sweep = sweep_with_defaults(config)
    d = defaults.detect_config(detectors=(detector,))
    d.source = source
    d.source_arm = grid.source_arm
    d.seed = cell.seed
    d.defender.fraction = budget.fraction
    d.defender.per_class = budget.per_class
    d.defender.val_fraction = sweep.defender.val_fraction
    d.detector.name = detector
    if detector in sweep.detector:
        d.detector[detector].update(sweep.detector[detector].to_dict())
    with d.unlocked():
        d.runtime = copy.deepcopy(config.runtime)
    return d


def repair_config(config: ml_collections.ConfigDict, grid: Grid, defense: Defense):
    """The repair one defense of the grid runs (its hyper-parameters validated).

    Raises:
        ConfigError: naming the defense, for hyper-parameters its class rejects.
    """
    sweep = sweep_with_defaults(config)
    hparams, steps = repair_hparams(sweep, defense), repair_steps(sweep, defense)
    try:
        return make_repair(defenses.REPAIRS, defense.name, hparams, steps=steps)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config.sweep.defenses: {defense.label}: {e}") from None


def check_defender_sizes(config, grid: Grid, train) -> None:
    """Refuses, before any training, a budget the defender cannot draw or too small for a
    repair's batch size.

    Counts the defender's tuning images as `jaxbd.defenses.defender_data` draws them from
    `train` (the clean training set), never a poison: a clean-label attack's poisons are
    `attack.fraction` of the training set taken from the target class alone (possibly all of
    it), so its draw is checked with that class reduced; a dirty-label attack's, drawn from
    every class, move a class's share by an image or so, and the defense pipeline checks the
    exact count again.

    Raises:
        ConfigError: naming the budget and the repair or the attack.
    """
    sweep = sweep_with_defaults(config)
    poisons = _poison_counts(config, grid, train)
    for budget in grid.budgets:
        settings = defenses.DefenderDataSettings(
            fraction=budget.fraction,
            per_class=budget.per_class,
            val_fraction=sweep.defender.val_fraction,
        )
        draws = {}
        for attack, is_poison in poisons.items():
            try:
                # Any key: the draw's sizes do not depend on it.
                draws[attack] = defenses.defender_data(
                    jax.random.key(0), train, is_poison, settings
                )
            except ValueError as e:
                where = f" with {attack}'s poisons" if attack else ""
                raise ConfigError(
                    f"config.sweep.defender_budgets: {budget.label}{where}: {e}"
                ) from None
        drawn = draws[""]  # the sizes every attack's draw shares (same total per budget)
        for name in grid.detectors:  # e.g. STRIP: no more overlays than tuning images
            detector = DETECTORS[name]
            if detector.check is not None:
                field = f"config.sweep.detector.{name}"
                try:
                    detector.check(
                        from_config(detector.settings, sweep.detector.get(name), field), drawn
                    )
                except ConfigError as e:
                    raise ConfigError(f"{e} (sweep.detectors at {budget.label})") from None
        for defense in grid.defenses:
            if defense.data_free:
                continue
            repair = repair_config(config, grid, defense)
            if len(drawn.tune) < repair.batch_size:
                raise ConfigError(
                    f"config.sweep.defense.{defense.name}.batch_size={repair.batch_size} "
                    f"({defense.label}) exceeds the defender's {len(drawn.tune)} tuning images "
                    f"at {budget.label}: lower it, or drop that budget"
                )


def _poison_counts(config, grid: Grid, train) -> dict[str, np.ndarray]:
    """Poison flags with each attack's per-class poison counts: no poisons (key ""), and for
    each clean-label attack of the grid `round(attack.fraction · N)` target-class images
    (which ones does not matter to the defender's sizes)."""
    masks = {"": np.zeros(len(train), bool)}
    target = np.flatnonzero(np.asarray(train.labels) == config.attack.target)
    count = min(round(config.attack.fraction * len(train)), len(target))
    for name in grid.attacks:
        if attacks.recipe(name).clean_label:
            mask = np.zeros(len(train), bool)
            mask[target[:count]] = True
            masks[name] = mask
    return masks


def sweep_with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.sweep` with every field (defaults filled in, types kept), as a ConfigDict."""
    section = defaults.sweep_section()
    _assign(section, config.sweep)
    return section


def _assign(target: ml_collections.ConfigDict, values: Mapping) -> None:
    """Sets `values` into `target`, recursively (not `ConfigDict.update`, which refuses the
    typed placeholders of the repairs' optional hyper-parameters)."""
    for key, value in values.items():
        if isinstance(value, Mapping | ml_collections.ConfigDict) and isinstance(
            target.get(key), ml_collections.ConfigDict
        ):
            _assign(target[key], value)
        else:
            target[key] = value
