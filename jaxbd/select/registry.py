"""The selection methods by name: `SELECTION_METHODS` (what each needs), `SELECTORS` (its
library function) and the names, `METHODS`.

A low module (it imports only the methods), so that settings and pipelines can read the
registry without importing each other or the package's `__init__`. Adding a method is one
module (its function and its `Method`, `jaxbd.select.method`) and one line here.
"""

from __future__ import annotations

from collections.abc import Callable

from jaxbd.select.activation_clustering import METHOD as ACTIVATION_CLUSTERING
from jaxbd.select.craig import METHOD as CRAIG
from jaxbd.select.forgetting import METHOD as FORGETTING
from jaxbd.select.grad_align import METHOD as GRAD_ALIGN
from jaxbd.select.method import Method
from jaxbd.select.random import METHOD as RANDOM
from jaxbd.select.scores import EL2N, GRAND
from jaxbd.select.spectral import METHOD as SPECTRAL

SELECTION_METHODS: dict[str, Method] = {
    "random": RANDOM,
    "el2n": EL2N,
    "grand": GRAND,
    "forgetting": FORGETTING,
    "craig": CRAIG,
    "grad_align": GRAD_ALIGN,
    "spectral": SPECTRAL,
    "activation_clustering": ACTIVATION_CLUSTERING,
}
"""Registry name (the values of `config.select.name`) -> what the method needs and does."""

SELECTORS: dict[str, Callable] = {name: m.selector for name, m in SELECTION_METHODS.items()}
"""Registry name -> the library function that selects."""

METHODS = tuple(SELECTION_METHODS)
"""The selection method names, in registry order."""


def _sections() -> dict[str, type]:
    sections: dict[str, type] = {}
    for name, m in SELECTION_METHODS.items():
        if m.section is None:
            continue
        known = sections.setdefault(m.section, m.settings)
        if m.settings is None or known is not m.settings:
            raise TypeError(f"{name}: section {m.section!r} needs one settings dataclass")
    return sections


SECTIONS: dict[str, type] = _sections()
"""The sub-sections of `config.select` (name -> settings dataclass), in registry order: the
fields `SelectSettings` gets beside its own."""


def method(name: str) -> Method:
    """The `Method` registered as `name`.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in SELECTION_METHODS:
        raise ValueError(f"unknown selection method {name!r}; registered: {list(METHODS)}")
    return SELECTION_METHODS[name]
