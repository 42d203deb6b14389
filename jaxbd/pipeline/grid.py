"""What a grid is: its axes, its cells and defense runs, where each lives, and what makes two
invocations the same grid. `jaxbd.pipeline.sweep` runs it; `jaxbd.pipeline.defense_report`
tabulates it.

A grid config is an experiment config with a `sweep` section (`jaxbd.configs.sweep_section`):

- a **cell** is one attack × selection method × seed: one experiment
  (`jaxbd.pipeline.experiment`), one attacked model, in `cells/<attack>/<method>/seed<k>`
  (`cells/<method>/seed<k>` when `sweep.attacks` is empty: the selection grid's layout,
  `config.attack.name` the only attack);
- a **defense run** is one defense × defender budget applied to a cell's model through the
  defense pipeline (`jaxbd.pipeline.defend`, what `scripts/defend.py` runs), in
  `<cell>/defenses/<defense>/<budget>`. A defense is a registry name (`finetune`) or a
  variant with its own hyper-parameters (`finetune@lr=0.01`: `defense.finetune` with lr
  replaced); a budget is r, a fraction of the training set (`r0.01`), or images per class
  (`spc10`). A data-free repair (`clp`) runs once per cell (`none`), whatever the budgets;
- a **detection run** is one detector (`jaxbd.pipeline.detect.DETECTORS`: STRIP, Neural
  Cleanse's score, CTI) × budget on a cell's model through the detection pipeline
  (`scripts/detect.py`'s), in `<cell>/detections/<detector>/<budget>`.

**The same grid.** `sweep.json` records the configuration. A later invocation may change
the axes (attacks, methods, seeds, defenses, budgets: new entries run, finished ones are
read) and the execution settings (`jaxbd.runs.identity.EXECUTION`, `sweep.seeds_together`,
`sweep.shard`, `sweep.num_shards`), nothing else that shapes a result: `differences` names
what changed. Hyper-parameters of an attack or a repair count only where both invocations use
it, so adding a repair to the registry, or to the grid, never invalidates a grid.

One file (over 500 lines) because the three change together: an axis, the run
configurations derived from it and what it means for the same grid.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxbd import attacks, defenses, runs, select
from jaxbd.defenses.registry import make_repair
from jaxbd.pipeline import experiment
from jaxbd.pipeline.detect import DETECTORS
from jaxbd.settings import ConfigError, from_config

SWEEP_FILE = "sweep.json"
FULL = "full"
"""The method name of the no-selection cell (training on the whole poisoned set)."""

AXES = (
    "sweep.attacks",
    "sweep.methods",
    "sweep.seeds",
    "sweep.defenses",
    "sweep.defender_budgets",
    "sweep.detectors",
)
"""The grid's axes: a later invocation may add (or drop) entries."""

SWEEP_EXECUTION = ("sweep.seeds_together", "sweep.shard", "sweep.num_shards")
"""How a grid executes, not what it computes: may change between invocations."""

# What the defense runs share; compared only when both invocations have defenses.
_DEFENSE_COMMON = (
    "sweep.defense.steps",
    "sweep.defense.eval_every",
    "sweep.defense.delta",
    "sweep.defense.patience",
    "sweep.defender.",
    "sweep.source_arm",
)
_LABEL = re.compile(
    r"[A-Za-z0-9_]+(@[A-Za-z0-9_]+=[A-Za-z0-9_.+-]+(,[A-Za-z0-9_]+=[A-Za-z0-9_.+-]+)*)?"
)


@dataclasses.dataclass(frozen=True)
class Budget:
    """The defender's data for one column of the grid.

    Attributes:
        fraction: r, the defender's images as a fraction of the training set (0 when
            `per_class` is set, and for a data-free repair).
        per_class: images per class, or None.
    """

    fraction: float
    per_class: int | None = None

    @property
    def label(self) -> str:
        """How tables name it: "r=1%", "spc=10", "no data"."""
        if self.per_class is not None:
            return f"spc={self.per_class}"
        if self.fraction == 0:
            return "no data"
        return f"r={100 * self.fraction:g}%"

    @property
    def dirname(self) -> str:
        """Its directory under a defense's: "r0.01", "spc10", "none"."""
        if self.per_class is not None:
            return f"spc{self.per_class}"
        return "none" if self.fraction == 0 else f"r{self.fraction:g}"


NO_DATA = Budget(0.0)
"""The budget of a data-free repair."""


@dataclasses.dataclass(frozen=True)
class Defense:
    """One defense of the grid.

    Attributes:
        label: as written in `sweep.defenses`, also its directory name: `name` or
            `name@field=value,...`.
        name: the repair's registry name (`jaxbd.defenses.REPAIRS`).
        overrides: (field, value) pairs replacing `sweep.defense.<name>.<field>`.
        data_free: the repair needs no defender images (it runs once per cell).
        needs_trigger: the repair assumes the defender knows the trigger.
    """

    label: str
    name: str
    overrides: tuple[tuple[str, Any], ...] = ()
    data_free: bool = False
    needs_trigger: bool = False


@dataclasses.dataclass(frozen=True)
class Cell:
    """One attacked model of the grid."""

    attack: str
    method: str
    seed: int


@dataclasses.dataclass(frozen=True)
class Grid:
    """A validated grid (`validate`).

    Attributes:
        attacks: the attacks (`sweep.attacks`, or `config.attack.name` alone).
        per_attack: whether cells are laid out per attack (`sweep.attacks` given).
        methods, seeds: the other cell axes.
        together: seeds of a method trained as one batched model.
        defenses: the defenses, in table order.
        budgets: the defender budgets, in table order.
        detectors: the detectors (`jaxbd.pipeline.detect.DETECTORS` names).
        source_arm: the model defended ("dense" or "pruned").
        shard, num_shards: this job's share of the grid.
    """

    attacks: tuple[str, ...]
    per_attack: bool
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    together: int
    defenses: tuple[Defense, ...]
    budgets: tuple[Budget, ...]
    source_arm: str
    shard: int
    num_shards: int
    detectors: tuple[str, ...] = ()

    def cells(self) -> list[Cell]:
        """Every cell in report order: seed-major, then attack, then method."""
        return [Cell(a, m, s) for s in self.seeds for a in self.attacks for m in self.methods]

    def batches(self) -> list[list[Cell]]:
        """This job's cells in execution order, in the groups that train together.

        One at a time (`together` = 1), seed by seed, so a seed's cells finish together (a
        table with n = 1 early); otherwise each attack's and method's seeds in groups of
        `together`. Only the batches of this job's share (`shard`).
        """
        chunks = [
            self.seeds[i : i + self.together] for i in range(0, len(self.seeds), self.together)
        ]
        if self.together == 1:
            order = [
                [Cell(a, m, s)] for s in self.seeds for a in self.attacks for m in self.methods
            ]
        else:
            order = [
                [Cell(a, m, s) for s in chunk]
                for a in self.attacks
                for m in self.methods
                for chunk in chunks
            ]
        return [batch for batch in order if self.shard_of(batch[0]) == self.shard]

    def shard_of(self, cell: Cell) -> int:
        """The shard that runs `cell`.

        Shares are whole groups of one attack and one seed (one group of seeds trained
        together): the pretraining run that a seed's selection methods share
        (`select.pretrain_dir`) is then never trained by two jobs at once.
        """
        chunk = self.seeds.index(cell.seed) // self.together
        group = chunk * len(self.attacks) + self.attacks.index(cell.attack)
        return group % self.num_shards

    def budgets_of(self, defense: Defense) -> tuple[Budget, ...]:
        """The budgets a defense runs at: every budget, or `NO_DATA` once if data-free."""
        return (NO_DATA,) if defense.data_free else self.budgets

    def defense_runs(self) -> list[tuple[Defense, Budget]]:
        """Every (defense, budget) applied to each cell, in table order."""
        return [(d, b) for d in self.defenses for b in self.budgets_of(d)]

    def detection_runs(self) -> list[tuple[str, Budget]]:
        """Every (detector, budget) applied to each cell, in table order."""
        return [(d, b) for d in self.detectors for b in self.budgets]

    def detection_dir(self, workdir: str, cell: Cell, detector: str, budget: Budget) -> str:
        """Where a detection run of a cell lives: `<cell>/detections/<detector>/<budget>`."""
        return os.path.join(self.cell_dir(workdir, cell), "detections", detector, budget.dirname)

    def cell_dir(self, workdir: str, cell: Cell) -> str:
        """Where a cell's run directory lives."""
        parts = [cell.attack] if self.per_attack else []
        return os.path.join(workdir, "cells", *parts, cell.method, f"seed{cell.seed}")

    def defense_dir(self, workdir: str, cell: Cell, defense: Defense, budget: Budget) -> str:
        """Where a defense run of a cell lives: `<cell>/defenses/<label>/<budget>`."""
        return os.path.join(self.cell_dir(workdir, cell), "defenses", defense.label, budget.dirname)

    def setup_dir(self, workdir: str, cell: Cell) -> str:
        """The run directory that holds the surrogate an attack may need, rebuilt once for
        all of a cell's defenses (`<cell>/defenses/_setup`)."""
        return os.path.join(self.cell_dir(workdir, cell), "defenses", "_setup")


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
    from jaxbd.configs import defend_config  # scripts/defend.py's defaults, one definition

    sweep = _sweep(config)
    d = defend_config()
    d.source = source
    d.source_arm = grid.source_arm
    d.seed = cell.seed
    d.defender.fraction = budget.fraction
    d.defender.per_class = budget.per_class
    d.defender.val_fraction = sweep.defender.val_fraction
    d.defender.trigger_knowledge = bool(sweep.defender.trigger_knowledge)
    common = sweep.defense
    d.defense.name = defense.name
    # A data-free repair keeps its own budget (CLP: no steps) under a grid-wide override.
    d.defense.steps = None if defense.data_free else common.steps
    d.defense.eval_every = common.eval_every
    d.defense.delta = common.delta
    d.defense.patience = common.patience
    section = d.defense[defense.name]
    if defense.name in common:
        section.update(common[defense.name].to_dict())
    for field, value in defense.overrides:
        section[field] = value
    for name in list(defenses.REPAIRS):
        if name != defense.name:
            del d.defense[name]
    with d.unlocked():
        d.runtime = copy.deepcopy(config.runtime)
    return d


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
    from jaxbd.configs import detect_config as defaults  # scripts/detect.py's defaults

    sweep = _sweep(config)
    d = defaults()
    d.source = source
    d.source_arm = grid.source_arm
    d.seed = cell.seed
    d.defender.fraction = budget.fraction
    d.defender.per_class = budget.per_class
    d.defender.val_fraction = sweep.defender.val_fraction
    d.detector.name = detector
    if detector in sweep.detector:
        d.detector[detector].update(sweep.detector[detector].to_dict())
    for name in list(DETECTORS):
        if name != detector:
            del d.detector[name]
    with d.unlocked():
        d.runtime = copy.deepcopy(config.runtime)
    return d


def parse_budget(value: Any, field: str = "config.sweep.defender_budgets") -> Budget:
    """A budget from its config value: a float r in (0, 1], or an int >= 2 per class.

    Raises:
        ConfigError: naming `field`.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"{field}: a budget is a fraction r (float, e.g. 0.01) or images per class (int), "
            f"got {value!r}"
        )
    if isinstance(value, int):
        if value < 2:
            raise ConfigError(
                f"{field}: images per class must be >= 2 (one to tune on, one to validate), "
                f"got {value}"
            )
        return Budget(0.0, value)
    if not 0 < value <= 1:
        raise ConfigError(f"{field}: a fraction r must be in (0, 1], got {value}")
    return Budget(float(value))


def parse_defense(label: Any, field: str = "config.sweep.defenses") -> Defense:
    """A defense from its label: `name` or `name@field=value,field=value`.

    Raises:
        ConfigError: naming `field`, for a malformed label or an unknown repair.
    """
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        raise ConfigError(
            f"{field}: {label!r} is not a defense: a name of jaxbd.defenses.REPAIRS, or "
            "name@field=value,... (letters, digits, _ . + - in values)"
        )
    name, _, rest = label.partition("@")
    if name not in defenses.REPAIRS:
        raise ConfigError(f"{field}: {name!r} must be one of {sorted(defenses.REPAIRS)}")
    overrides = []
    for item in rest.split(",") if rest else ():
        key, _, text = item.partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a string value, e.g. a variant name
        overrides.append((key, value))
    repair = defenses.REPAIRS[name]()
    return Defense(
        label=label,
        name=name,
        overrides=tuple(overrides),
        data_free=bool(getattr(repair, "data_free", False)),
        needs_trigger=bool(getattr(repair, "needs_trigger", False)),
    )


def validate(config: ml_collections.ConfigDict) -> Grid:
    """Checks the sweep settings, every defense and every cell's experiment settings before
    any work.

    Raises:
        ConfigError: naming the offending field.
    """
    if "sweep" not in config:
        raise ConfigError(
            "config.sweep: missing; a grid config needs a sweep section with its axes "
            "(see configs/paper.py, configs/pyp_grid.py)"
        )
    sweep = _sweep(config)
    methods, seeds = tuple(sweep.methods), tuple(sweep.seeds)
    valid = (FULL, *select.SELECTORS)
    if not methods or any(m not in valid for m in methods) or len(set(methods)) < len(methods):
        raise ConfigError(
            f"config.sweep.methods: must be distinct names from {list(valid)}, got {methods}"
        )
    if (
        not seeds
        or any(not isinstance(s, int) or isinstance(s, bool) for s in seeds)
        or len(set(seeds)) < len(seeds)
    ):
        raise ConfigError(f"config.sweep.seeds: must be distinct integers, got {seeds}")
    together = sweep.seeds_together
    if not isinstance(together, int) or together < 1:
        raise ConfigError(f"config.sweep.seeds_together: must be an integer >= 1, got {together!r}")
    names = tuple(sweep.attacks) or (config.attack.name,)
    if any(a not in attacks.ATTACKS for a in names) or len(set(names)) < len(names):
        raise ConfigError(
            f"config.sweep.attacks: must be distinct names from {sorted(attacks.ATTACKS)}, "
            f"got {tuple(sweep.attacks)}"
        )
    for name in names:
        if together > 1 and not attacks.recipe(name).groupable:
            raise ConfigError(
                f"config.sweep.seeds_together: {name} trains one model at a time (its own "
                f"epoch function); use 1, got {together}"
            )
    shard, num_shards = sweep.shard, sweep.num_shards
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ConfigError(f"config.sweep.num_shards: must be an integer >= 1, got {num_shards!r}")
    if not isinstance(shard, int) or isinstance(shard, bool) or not 0 <= shard < num_shards:
        raise ConfigError(
            f"config.sweep.shard: must be an integer in [0, num_shards={num_shards}), got {shard!r}"
        )
    if sweep.source_arm not in ("dense", "pruned"):
        raise ConfigError(
            f"config.sweep.source_arm: must be 'dense' or 'pruned', got {sweep.source_arm!r}"
        )
    if sweep.source_arm == "pruned" and config.prune.rounds == 0:
        raise ConfigError(
            "config.sweep.source_arm: 'pruned' needs a pruned arm (config.prune.rounds > 0)"
        )
    labels = tuple(sweep.defenses)
    found = tuple(parse_defense(label) for label in labels)
    if len(set(labels)) < len(labels):
        raise ConfigError(f"config.sweep.defenses: must be distinct, got {labels}")
    budgets = tuple(parse_budget(b) for b in sweep.defender_budgets)
    if len(set(budgets)) < len(budgets):
        raise ConfigError(
            f"config.sweep.defender_budgets: must be distinct, got {tuple(sweep.defender_budgets)}"
        )
    if any(not d.data_free for d in found) and not budgets:
        raise ConfigError("config.sweep.defender_budgets: a defense that needs data needs one")
    detectors = tuple(sweep.detectors)
    if any(d not in DETECTORS for d in detectors) or len(set(detectors)) < len(detectors):
        raise ConfigError(
            f"config.sweep.detectors: must be distinct names from {sorted(DETECTORS)}, "
            f"got {detectors}"
        )
    if detectors and not budgets:
        raise ConfigError("config.sweep.defender_budgets: a detector needs one")
    grid = Grid(
        attacks=names,
        per_attack=bool(sweep.attacks),
        methods=methods,
        seeds=seeds,
        together=together,
        defenses=found,
        budgets=budgets,
        source_arm=sweep.source_arm,
        shard=shard,
        num_shards=num_shards,
        detectors=detectors,
    )
    for name in detectors:  # its settings, checked by its dataclass
        from_config(
            DETECTORS[name].settings, sweep.detector.get(name), f"config.sweep.detector.{name}"
        )
    for d in found:
        if d.needs_trigger and not sweep.defender.trigger_knowledge:
            raise ConfigError(
                f"config.sweep.defender.trigger_knowledge: {d.name} assumes the defender knows "
                "the trigger; set it to True to grant that knowledge"
            )
        repair_config(config, grid, d)  # its hyper-parameters, checked by its class
    first = seeds[0]
    for name in names:
        for method in methods:
            experiment.validate_config(cell_config(config, grid, Cell(name, method, first), "-"))
    return grid


def repair_config(config: ml_collections.ConfigDict, grid: Grid, defense: Defense):
    """The repair one defense of the grid runs (its hyper-parameters validated).

    Raises:
        ConfigError: naming the defense, for hyper-parameters its class rejects.
    """
    cell = Cell(grid.attacks[0], grid.methods[0], grid.seeds[0])
    d = defense_config(config, grid, cell, defense, grid.budgets_of(defense)[0], "-")
    try:
        return make_repair(
            defenses.REPAIRS, defense.name, d.defense[defense.name], steps=d.defense.steps
        )
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
    sweep = _sweep(config)
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


def complete(config: Mapping[str, Any]) -> dict[str, Any]:
    """A grid configuration (nested dict) with every field of the sweep section, defaults
    filled in: how `sweep.json` records it, so that a grid written by a config with a
    partial section (`sweep = dict(methods=..., seeds=...)`) compares field by field."""
    from jaxbd.configs import sweep_section  # the one definition of the defaults

    out = _plain(config)
    out["sweep"] = _merge(_plain(sweep_section().to_dict()), _plain(config.get("sweep", {})))
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """`key: old -> new` lines for what makes two grid configurations different grids (empty:
    the same grid; see the module docstring).

    Args:
        old: the recorded configuration (`sweep.json`).
        new: this invocation's (`config.to_dict()`).
    """
    a, b = complete(old), complete(new)
    lines = []
    if bool(a["sweep"]["attacks"]) != bool(b["sweep"]["attacks"]):
        lines.append(
            f"sweep.attacks: {a['sweep']['attacks']!r} -> {b['sweep']['attacks']!r} (an empty "
            "list lays cells out without an attack level; the two layouts do not mix)"
        )
    fa, fb = _identity(a, b), _identity(b, a)
    missing = "<missing>"
    lines += [
        f"{key}: {fa.get(key, missing)!r} -> {fb.get(key, missing)!r}"
        for key in sorted(set(fa) | set(fb))
        if fa.get(key, missing) != fb.get(key, missing)
    ]
    return lines


def _identity(config: dict, other: dict) -> dict[str, Any]:
    """The settings of `config` that must agree with `other` for the two to be one grid."""
    flat = runs.identity(config, execution=(*runs.EXECUTION, *AXES, *SWEEP_EXECUTION))
    sweep, other_sweep = config["sweep"], other["sweep"]
    both = bool(sweep["attacks"]) and bool(other_sweep["attacks"])
    used = set(sweep["attacks"] or [config["attack"]["name"]]) & set(
        other_sweep["attacks"] or [other["attack"]["name"]]
    )
    repairs = _repair_names(sweep["defenses"]) & _repair_names(other_sweep["defenses"])
    detectors = set(sweep.get("detectors", [])) & set(other_sweep.get("detectors", []))
    defended = bool(sweep["defenses"]) and bool(other_sweep["defenses"])
    # The defender's data and the model examined matter to defenses and detectors alike.
    examined = defended or bool(detectors)
    kept = {}
    for key, value in flat.items():
        parts = key.split(".")
        if key == "attack.name" and both:
            continue  # each cell names its attack
        if parts[0] == "attack" and len(parts) > 2 and parts[1] not in used:
            continue  # hyper-parameters of an attack one of the two does not run
        if key.startswith("sweep.detector.") and parts[2] not in detectors:
            continue  # settings of a detector one of the two does not run
        if key.startswith(("sweep.defender.", "sweep.source_arm")) and not examined:
            continue
        if key.startswith("sweep.defense."):
            if not defended:
                continue
            own = not key.startswith(_DEFENSE_COMMON)
            if own and parts[2] not in repairs:
                continue  # a repair one of the two does not run
        kept[key] = value
    return kept


def _sweep(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.sweep` with every field (defaults filled in, types kept), as a ConfigDict."""
    from jaxbd.configs import sweep_section  # the one definition of the defaults

    section = sweep_section()
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


def _repair_names(labels: Sequence[Any]) -> set[str]:
    """The registry names of the repairs among recorded defense labels (others ignored)."""
    names = set()
    for label in labels:
        # A label this version does not know is compared by its runs' own configs.
        with contextlib.suppress(ConfigError):
            names.add(parse_defense(label).name)
    return names


def _plain(value: Any) -> Any:
    """Nested mappings as dicts, tuples as lists (JSON's view of a configuration)."""
    if isinstance(value, Mapping) or hasattr(value, "to_dict"):
        items = value.to_dict() if hasattr(value, "to_dict") else value
        return {str(k): _plain(v) for k, v in items.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _merge(defaults: dict, values: dict) -> dict:
    """`defaults` updated by `values`, recursively into nested dicts."""
    out = dict(defaults)
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
