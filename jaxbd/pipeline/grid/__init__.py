"""What a grid is: its axes, its cells and defense runs, where each lives, and what makes two
invocations the same grid. `jaxbd.pipeline.grid.sweep` runs it; `jaxbd.pipeline.grid.defense_report`
tabulates it.

A grid config is an experiment config with a `sweep` section
(`jaxbd.pipeline.defaults.sweep_section`). `validate` checks it whole before any work and
returns the `Grid`; the pieces live by concept and are re-exported here:

- `jaxbd.pipeline.grid.axes`: the axes and cells (`Cell`, `Defense`, `Budget`, `Grid`: the
  order of the runs, this job's share, the directories);
- `jaxbd.pipeline.grid.run_configs`: the configuration of each cell's experiment, defense run and
  detection run (`jaxbd.pipeline.detect.DETECTORS`: STRIP, Neural Cleanse, CTI), in
  `<cell>/defenses/<defense>/<budget>` and `<cell>/detections/<detector>/<budget>`;
- `jaxbd.pipeline.grid.identity`: what makes two invocations the same grid (`differences`).
"""

from __future__ import annotations

import ml_collections

from jaxbd import attacks, select
from jaxbd.pipeline import experiment
from jaxbd.pipeline.detect import DETECTORS
from jaxbd.pipeline.grid.axes import (
    FULL,
    NO_DATA,
    Budget,
    Cell,
    Defense,
    Grid,
    parse_budget,
    parse_defense,
)
from jaxbd.pipeline.grid.identity import AXES, SWEEP_EXECUTION, complete, differences
from jaxbd.pipeline.grid.run_configs import (
    cell_config,
    check_defender_sizes,
    defense_config,
    detect_config,
    repair_config,
    sweep_with_defaults,
)
from jaxbd.settings import ConfigError, from_config

__all__ = [
    "AXES",
    "FULL",
    "NO_DATA",
    "SWEEP_EXECUTION",
    "SWEEP_FILE",
    "Budget",
    "Cell",
    "Defense",
    "Grid",
    "cell_config",
    "check_defender_sizes",
    "complete",
    "defense_config",
    "detect_config",
    "differences",
    "parse_budget",
    "parse_defense",
    "repair_config",
    "validate",
]

SWEEP_FILE = "sweep.json"


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
    sweep = sweep_with_defaults(config)
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
