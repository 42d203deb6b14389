"""Settings at the boundary: a config section becomes a frozen, validated dataclass.

Configs are `ml_collections.ConfigDict`s (configs are code, overridable from the command
line); the libraries take frozen settings dataclasses instead, each validating itself in
`__post_init__` (with `require`) next to the defaults it checks. `from_config(CraigSettings,
config.select.craig, "config.select.craig")` converts one section, and turns a bad value into
a `ConfigError` that names the full field (`config.select.fraction: must be in (0, 1], got
2.0`), before anything is written. A field whose type is itself a settings dataclass is
built from the sub-section of the same name, recursively; lists become tuples.

The other direction, once for every config section: `config_section(CraigSettings)` is the
section of the dataclass's defaults (a `T | None` field a typed placeholder), so a default
is written in one place, its dataclass; a factory's keyword defaults work alike.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import ml_collections
from ml_collections import config_dict

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
            kwargs[name] = tuplify(value)
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


def tuplify(value: Any) -> Any:
    """Lists (what a command-line override gives) as tuples, recursively."""
    if isinstance(value, list | tuple):
        return tuple(tuplify(v) for v in value)
    return value


def config_section(
    source: Any,
    *,
    fields: Collection[str] | None = None,
    exclude: Collection[str] = (),
    localns: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> ml_collections.ConfigDict:
    """The config section of a settings dataclass's defaults (or of an instance's values).

    The one builder of config sections from their definitions: a field with a default (or a
    default factory) becomes a key in field order; None becomes a typed placeholder (the T
    of a `T | None` annotation), so `--config.<section>.<field>=1` works; a field whose value
    is a dataclass becomes a sub-section, recursively. A callable that is not a dataclass (an
    attack's factory) gives its keyword arguments' defaults the same way.

    Args:
        source: a dataclass (its defaults), a dataclass instance (its values) or a callable.
        fields: only these fields (in the definition's order); None: every one.
        exclude: fields left out.
        localns: names for resolving string annotations that the module's globals lack.
        **overrides: values that replace a field's (a placeholder included).

    Returns:
        A new `ConfigDict`.
    """
    section = ml_collections.ConfigDict()
    for name, value, hint in _defaults(source, localns):
        if name in exclude or (fields is not None and name not in fields):
            continue
        if name in overrides:
            section[name] = overrides.pop(name)
        elif value is None:
            section[name] = config_dict.placeholder(_optional_type(source, name, hint))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            section[name] = config_section(value)
        else:
            section[name] = value
    if overrides:
        raise ValueError(f"{_name(source)}: no field(s) {sorted(overrides)} to override")
    return section


def _defaults(source: Any, localns) -> list[tuple[str, Any, Any]]:
    """(name, default or value, annotation) of every field that has one."""
    cls = source if isinstance(source, type) else type(source)
    try:
        hints = typing.get_type_hints(cls if dataclasses.is_dataclass(cls) else source, localns)
    except (NameError, TypeError):
        hints = {}
    out = []
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            if not isinstance(source, type):
                value = getattr(source, f.name)
            elif f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                continue
            out.append((f.name, value, hints.get(f.name, f.type)))
        return out
    for param in inspect.signature(source).parameters.values():
        if param.default is not inspect.Parameter.empty:
            out.append((param.name, param.default, hints.get(param.name, param.annotation)))
    return out


def _optional_type(source: Any, name: str, hint: Any) -> type:
    """The T of a `T | None` annotation (resolved, or read from its text)."""
    if isinstance(hint, str):
        options = [t.strip() for t in hint.split("|") if t.strip() != "None"]
        known = {"int": int, "float": float, "str": str, "bool": bool}
        if len(options) == 1 and options[0] in known:
            return known[options[0]]
    else:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        if union and len(options) == 1:
            return typing.get_origin(options[0]) or options[0]
    raise TypeError(f"{_name(source)}.{name}: cannot make a config placeholder of {hint!r}")


def _name(source: Any) -> str:
    cls = source if isinstance(source, type) or callable(source) else type(source)
    return getattr(cls, "__name__", repr(cls))
