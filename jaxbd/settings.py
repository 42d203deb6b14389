"""Settings at the boundary: a config section becomes a frozen, validated dataclass.

Configs are `ml_collections.ConfigDict`s (configs are code, overridable from the command
line); the libraries take frozen settings dataclasses instead, each validating itself in
`__post_init__` next to the defaults it checks. `from_config` converts one section, and
turns a bad value into a `ConfigError` that names the full field (`config.select.fraction:
must be in (0, 1], got 2.0`), before anything is written.

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class CraigSettings:
        greedy: str = "lazy"

        def __post_init__(self):
            require(self.greedy in GREEDY, "greedy", f"must be one of {list(GREEDY)}")

    settings = from_config(CraigSettings, config.select.craig, "config.select.craig")

A field whose type is itself a settings dataclass is built from the sub-section of the same
name, recursively. Tuples stay tuples (a command-line override gives lists).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the valid values."""


class InvalidSettingError(ValueError):
    """Raised by a settings dataclass for one bad field (the field name relative to it)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def require(condition: bool, field: str, message: str, value: Any = dataclasses.MISSING):
    """Raises `InvalidSettingError(field, message)` unless `condition` holds.

    A numeric `value` that is not finite (inf, -inf, nan) fails whatever `condition` says:
    comparisons such as `lr > 0` or `weight_decay >= 0` accept `inf`, and no setting means
    anything at infinity.

    Args:
        condition: what must be true.
        field: the field's name within its settings class (dotted for nested fields).
        message: what is allowed, e.g. "must be >= 1".
        value: the offending value, appended as ", got <value>" when given.
    """
    if value is not dataclasses.MISSING and is_number(value) and not math.isfinite(value):
        raise InvalidSettingError(field, f"{message} and finite, got {value!r}")
    if not condition:
        if value is not dataclasses.MISSING:
            message = f"{message}, got {value!r}"
        raise InvalidSettingError(field, message)


def require_int(value: Any, field: str, minimum: int) -> None:
    """Raises `InvalidSettingError` unless `value` is an integer (not a bool) >= `minimum`.

    Args:
        value: the setting's value.
        field: the field's name within its settings class.
        minimum: the least allowed value.
    """
    require(
        isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum,
        field,
        f"must be an integer >= {minimum}",
        value,
    )


def require_finite(value: Any, field: str, message: str = "must be a finite number") -> None:
    """Raises `InvalidSettingError` unless `value` is a finite int or float (not a bool).

    Args:
        value: the setting's value.
        field: the field's name within its settings class.
        message: what is allowed.
    """
    if not (is_number(value) and math.isfinite(value)):
        raise InvalidSettingError(field, f"{message}, got {value!r}")


def is_number(value: Any) -> bool:
    """True for an int or float (NumPy scalars included), False for a bool or anything else."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def from_config(cls: type[T], section: Mapping | None, prefix: str) -> T:
    """Builds the settings dataclass `cls` from a config section.

    Args:
        cls: a frozen dataclass whose `__post_init__` validates it (raising
            `InvalidSettingError`); fields typed as another settings dataclass are built from
            the sub-section of the same name.
        section: a `ConfigDict` (or mapping) holding some or all of the fields; missing
            fields take the dataclass defaults; None: all defaults.
        prefix: the section's dotted name, e.g. "config.select", used in error messages.

    Returns:
        The validated settings.

    Raises:
        ConfigError: for an unknown field in the section, or an invalid value.
    """
    values = as_dict(section)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}: unknown field(s) {unknown}; known fields: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            kwargs[name] = from_config(hint, value, f"{prefix}.{name}")
        else:
            kwargs[name] = _tuplify(value)
    try:
        return cls(**kwargs)
    except InvalidSettingError as e:
        raise ConfigError(f"{prefix}.{e.field}: {e.message}") from None
    except TypeError as e:  # a missing required field
        raise ConfigError(f"{prefix}: {e}") from None


def to_dict(settings: Any) -> dict[str, Any]:
    """The settings as a plain (JSON-able) dict, nested dataclasses included."""
    return dataclasses.asdict(settings)


def as_dict(section: Mapping | None) -> dict[str, Any]:
    if section is None:
        return {}
    if hasattr(section, "to_dict"):
        return section.to_dict()
    return dict(section)


def _tuplify(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_tuplify(v) for v in value)
    return value
