"""The grid's axes and cells: what `config.sweep` lists, parsed and validated.

A **cell** is one attack × selection method × seed: one experiment, one attacked model, in
`cells/<attack>/<method>/seed<k>` (`cells/<method>/seed<k>` when `sweep.attacks` is empty:
the selection grid's layout). A **defense** is a repair's registry name (`finetune`) or a
variant with its own hyper-parameters (`finetune@lr=0.01`); a **budget** is the defender's
data, r of the training set (`r0.01`) or images per class (`spc10`); a data-free repair
(`clp`) runs once per cell (`none`). `Grid` holds the validated axes, the order of the
cells and runs, this job's share and where each run lives.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
from typing import Any

from jaxbd import defenses
from jaxbd.settings import ConfigError

FULL = "full"
"""The method name of the no-selection cell (training on the whole poisoned set)."""

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
