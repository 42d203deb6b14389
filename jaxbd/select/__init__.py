"""Coreset selection: choose a subset of a poisoned training set before training.

Every selector returns a `Selection(indices int32[k], weights float32[k])` in canonical index
order, per class by observed label; the coreset methods' budgets sum exactly to
`round(fraction · N)`, the two detectors (`spectral`, `activation_clustering`) keep what they
do not flag.

`SELECTION_METHODS` (`jaxbd.select.registry`) maps each method's name (`config.select.name`)
to its `Method`: the library function (`SELECTORS`) and what it needs (a pretraining run,
scores over epochs, the final model's features, ...), which is all that
`jaxbd.pipeline.stages.selection.run_selection` and `SelectSettings` dispatch on. The table of
methods and inputs, and how to add one: docs/selection.md.
"""

from jaxbd.select import forgetting
from jaxbd.select.activation_clustering import activation_clustering, activation_clustering_filter
from jaxbd.select.base import Selection, class_budgets, make_selection, num_to_select
from jaxbd.select.craig import craig, gradient_proxy
from jaxbd.select.facility_location import facility_location
from jaxbd.select.grad_align import grad_align
from jaxbd.select.method import Inputs, Method
from jaxbd.select.random import random_subset
from jaxbd.select.ranking import rank_within_class
from jaxbd.select.registry import METHODS, SELECTION_METHODS, SELECTORS
from jaxbd.select.report import selection_report
from jaxbd.select.scores import el2n_scores, grand_scores, make_grand_fn
from jaxbd.select.settings import (
    ActivationClusteringSettings,
    CraigSettings,
    ForgettingSettings,
    ScoreSettings,
    SelectSettings,
    SpectralSettings,
)
from jaxbd.select.spectral import spectral_filter, spectral_scores

__all__ = [
    "METHODS",
    "SELECTION_METHODS",
    "SELECTORS",
    "ActivationClusteringSettings",
    "CraigSettings",
    "ForgettingSettings",
    "Inputs",
    "Method",
    "ScoreSettings",
    "SelectSettings",
    "Selection",
    "SpectralSettings",
    "activation_clustering",
    "activation_clustering_filter",
    "class_budgets",
    "craig",
    "el2n_scores",
    "facility_location",
    "forgetting",
    "grad_align",
    "gradient_proxy",
    "grand_scores",
    "make_grand_fn",
    "make_selection",
    "num_to_select",
    "random_subset",
    "rank_within_class",
    "selection_report",
    "spectral_filter",
    "spectral_scores",
]
