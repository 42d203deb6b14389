"""What makes two invocations of a grid the same grid.

`sweep.json` records the configuration (`complete`: every field of the sweep section, defaults
filled in). A later invocation may change the axes (attacks, methods, seeds, defenses,
budgets, detectors: new entries run, finished ones are read) and the execution settings
(`jaxbd.runs.identity.EXECUTION`, `sweep.seeds_together`, `sweep.shard`, `sweep.num_shards`),
nothing else that shapes a result: `differences` names what changed. Hyper-parameters of an
attack, a repair or a detector count only where both invocations use it, so adding one to
the registry, or to the grid, never invalidates a grid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from jaxbd import runs
from jaxbd.pipeline.defaults import sweep_section
from jaxbd.pipeline.grid.axes import parse_defense
from jaxbd.settings import ConfigError

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


def complete(config: Mapping[str, Any]) -> dict[str, Any]:
    """A grid configuration (nested dict) with every field of the sweep section, defaults
    filled in: how `sweep.json` records it, so that a grid written by a config with a
    partial section (`sweep = dict(methods=..., seeds=...)`) compares field by field."""
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
