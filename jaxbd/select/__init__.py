"""Coreset selection: choose a subset of a poisoned training set before training.

Every selector returns a `Selection(indices int32[k], weights float32[k])` in canonical index
order, per class by observed label; the coreset methods' budgets sum exactly to
`round(fraction · N)` (the two detectors keep what they do not flag, see below).

`SELECTORS` maps each registry name (the values of `config.select.name`) to the library
function that makes the choice; the scores or gradient proxies they consume come from a
pretrained model (`jaxbd.select.scores`, `jaxbd.select.forgetting`, `gradient_proxy`), and
`jaxbd.pipeline.selection.run_selection` wires the whole phase into an experiment.
`SelectSettings` is the validated form of `config.select` (`jaxbd.select.settings`).

| name                    | function                       | input                                 |
| ----------------------- | ------------------------------ | ------------------------------------- |
| `random`                | `random_subset`                | labels and a PRNG key                 |
| `el2n`                  | `rank_within_class`            | `el2n_scores` of early models         |
| `grand`                 | `rank_within_class`            | `grand_scores` (gradient norms)       |
| `forgetting`            | `rank_within_class`            | `forgetting.scores` of a run          |
| `craig`                 | `craig`                        | a pretrained model's `gradient_proxy` |
| `grad_align`            | `grad_align`                   | a pretrained model's logits, features |
| `spectral`              | `spectral_filter`              | a pretrained model's features         |
| `activation_clustering` | `activation_clustering_filter` | a pretrained model's features         |

`spectral` (Spectral Signatures: `spectral_scores`) and `activation_clustering`
(`activation_clustering` flags) are poison detectors used as selections: they keep what they
do not flag, so the subset size is theirs (`select.spectral.poison_rate`, the clusters' sizes)
and `select.fraction` does not apply to them.
"""

from jaxbd.select import forgetting
from jaxbd.select.activation_clustering import activation_clustering, activation_clustering_filter
from jaxbd.select.base import Selection, class_budgets, make_selection, num_to_select
from jaxbd.select.craig import craig, gradient_proxy
from jaxbd.select.facility_location import facility_location
from jaxbd.select.grad_align import grad_align
from jaxbd.select.random import random_subset
from jaxbd.select.ranking import rank_within_class
from jaxbd.select.registry import METHODS, SELECTORS
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
    "SELECTORS",
    "ActivationClusteringSettings",
    "CraigSettings",
    "ForgettingSettings",
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
