"""`jaxbd.settings.config_section`: the one builder of config sections from settings."""

from __future__ import annotations

import dataclasses

import pytest
from ml_collections import FieldReference

from jaxbd.settings import config_section, from_config, tuplify


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner:
    k: int = 3


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outer:
    name: str | None = None
    rate: float | None = None
    steps: int | None = None
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = dataclasses.field(default_factory=Inner)
    required_elsewhere: int = dataclasses.field(default=0, init=False)


def factory(x, *, size: int = 7, scale: float | None = None, key=None):
    del x, size, scale, key


def test_defaults_in_field_order_with_typed_placeholders():
    section = config_section(Outer)
    assert list(section.keys()) == sorted(["name", "rate", "steps", "sizes", "inner"])
    assert list(section._fields) == ["name", "rate", "steps", "sizes", "inner"]
    types = {k: section._fields[k].get_type() for k in ("name", "rate", "steps")}
    assert types == {"name": str, "rate": float, "steps": int}
    assert all(isinstance(section._fields[k], FieldReference) for k in types)
    assert section.sizes == (1, 2) and section.inner.k == 3
    section.steps = 5  # a placeholder takes a value of its type
    assert from_config(Outer, section, "config.x") == Outer(steps=5)


def test_an_instance_gives_its_values():
    section = config_section(Outer(rate=0.5, inner=Inner(k=4)))
    assert section.rate == 0.5 and section.inner.k == 4
    assert section._fields["steps"].get_type() is int


def test_fields_exclude_and_overrides():
    section = config_section(Outer, fields=("steps", "name"), steps=9)
    assert list(section._fields) == ["name", "steps"] and section.steps == 9
    assert list(config_section(Outer, exclude=("inner", "sizes"))._fields) == [
        "name",
        "rate",
        "steps",
    ]
    with pytest.raises(ValueError, match="bogus"):
        config_section(Outer, bogus=1)


def test_a_factory_gives_its_keyword_defaults():
    section = config_section(factory, exclude=("key",))
    assert list(section._fields) == ["size", "scale"]
    assert section.size == 7 and section._fields["scale"].get_type() is float


def test_an_untypable_none_is_refused():
    def bad(*, value=None):
        del value

    with pytest.raises(TypeError, match="placeholder"):
        config_section(bad)


def test_tuplify():
    assert tuplify([1, [2, 3]]) == (1, (2, 3))
    assert tuplify("ab") == "ab"
