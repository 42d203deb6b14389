"""Types and conversions every layer shares: the pytree alias and JSON-able values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

PyTree = Any
"""A nested structure of arrays (dicts, lists, tuples, flax dataclasses) as JAX sees it."""


def jsonable(value: Any) -> Any:
    """`value` as JSON stores it: NumPy/JAX arrays as (nested) lists, scalars as Python
    numbers, tuples as lists, keys as strings, NaN and infinities as None (JSON has none)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "ndim") and hasattr(value, "tolist"):  # np.ndarray, np.generic, jax.Array
        value = np.asarray(value)
        return jsonable(value.tolist()) if value.ndim else jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
