"""The selection methods by name: `SELECTORS` and its names, `METHODS`.

A low module (it imports only the selectors), so that settings and pipelines can read the
method names without importing each other or the package's `__init__`.
"""

from __future__ import annotations

from jaxbd.select.activation_clustering import activation_clustering_filter
from jaxbd.select.craig import craig
from jaxbd.select.grad_align import grad_align
from jaxbd.select.random import random_subset
from jaxbd.select.ranking import rank_within_class
from jaxbd.select.spectral import spectral_filter

SELECTORS = {
    "random": random_subset,
    "el2n": rank_within_class,
    "grand": rank_within_class,
    "forgetting": rank_within_class,
    "craig": craig,
    "grad_align": grad_align,
    "spectral": spectral_filter,
    "activation_clustering": activation_clustering_filter,
}
"""Registry name (the values of `config.select.name`) -> the library function that selects."""

METHODS = tuple(SELECTORS)
"""The selection method names, in registry order."""
