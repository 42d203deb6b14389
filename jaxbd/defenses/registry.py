"""The repair registry's configuration: each repair's hyper-parameters as a config section.

`hparams_config(repair_class)` reads a repair class's field defaults into a ConfigDict, so
`config.defense.<name>.<field>` exists for every hyper-parameter and can be overridden from
the command line; `make_repair(name, hparams, steps=None)` builds one, with the common step
budget override.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from jaxbd.settings import config_section, tuplify


def hparams_config(repair_class: Callable) -> ml_collections.ConfigDict:
    """A ConfigDict of a repair class's keyword arguments (its dataclass fields; class-level
    constants such as `name` are not arguments) with their defaults, None defaults as typed
    placeholders (`jaxbd.settings.config_section`)."""
    return config_section(repair_class)


def make_repair(
    repairs: Mapping[str, Callable], name: str, hparams: Mapping[str, Any] | None, **overrides
):
    """Builds repair `name` from its configured hyper-parameters.

    Args:
        repairs: the registry (`jaxbd.defenses.REPAIRS`).
        name: a key of it.
        hparams: keyword arguments (a ConfigDict section or dict; lists become tuples, unset
            placeholders take the class's default).
        **overrides: further keyword arguments that win (e.g. `steps`), ignored when None.

    Raises:
        ValueError: for an unknown name or hyper-parameters the class rejects.
    """
    if name not in repairs:
        raise ValueError(f"unknown defense {name!r}; registered: {sorted(repairs)}")
    items = {} if hparams is None else dict(_as_dict(hparams))
    items.update({k: v for k, v in overrides.items() if v is not None})
    kwargs = {k: tuplify(v) for k, v in items.items() if v is not None}
    return repairs[name](**kwargs)


def _as_dict(section) -> dict:
    return section.to_dict() if hasattr(section, "to_dict") else dict(section)
