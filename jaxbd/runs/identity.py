"""What makes two runs the same run: one definition for resuming and for sharing work.

A run directory resumes only a run whose configuration has the same *identity*, and a stage
shared between runs (the selection's pretraining run, stored once per seed for a sweep) is
found by the fingerprint of the identity restricted to what that stage depends on. Both ask
this module, so "the same run" has one meaning.

The identity is the configuration without its *execution settings*: how a run executes or
where its inputs are found, not what it computes (the device count, the progress bar, the
data cache, where a local data copy lives, where shared pretraining runs are kept). Data
loaded from any source is verified to be the same CIFAR-10, so its path and source are
execution settings too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from jaxbd.types import jsonable

__all__ = ["EXECUTION", "differences", "fingerprint", "flatten", "identity", "jsonable"]

EXECUTION = (
    "runtime.",
    "data.cache_dir",
    "data.path",
    "data.source",
    "select.pretrain_dir",
)
"""Dotted prefixes of the execution settings: a resumed run may change them."""


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def identity(
    config: Mapping,
    *,
    only: Sequence[str] | None = None,
    execution: Sequence[str] = EXECUTION,
) -> dict[str, Any]:
    """The settings that determine a run's results, flattened to dotted keys.

    Args:
        config: a configuration as a (nested) dict, e.g. `config.to_dict()`.
        only: keep only these sections or fields (dotted names, e.g. `("data", "seed",
            "select.pretrain_epochs")`): the identity of a stage that depends on just them.
        execution: prefixes of the settings left out (default: `EXECUTION`).

    Returns:
        `{dotted key: JSON value}`.
    """
    flat = flatten(jsonable(config))
    kept = {k: v for k, v in flat.items() if not k.startswith(tuple(execution))}
    if only is not None:
        kept = {k: v for k, v in kept.items() if any(k == p or k.startswith(f"{p}.") for p in only)}
    return kept


def differences(old: Mapping, new: Mapping, *, execution: Sequence[str] = EXECUTION) -> list[str]:
    """`key: old -> new` lines for every setting of the identity that differs (empty: the
    same run).

    Args:
        old: one configuration (nested dict).
        new: the other.
        execution: prefixes that may differ (default: `EXECUTION`; `()` compares everything).
    """
    a = identity(old, execution=execution)
    b = identity(new, execution=execution)
    missing = "<missing>"
    return [
        f"{key}: {a.get(key, missing)!r} -> {b.get(key, missing)!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key, missing) != b.get(key, missing)
    ]


def fingerprint(ident: Mapping[str, Any]) -> str:
    """A short stable hash (16 hex digits) of an identity, for directory names."""
    text = json.dumps(dict(ident), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
