"""Coreset selection: choose a subset of a poisoned training set before training.

Every selector returns a `Selection(indices int32[k], weights float32[k])` in canonical index
order, per class by observed label with budgets that sum exactly to `round(fraction · N)`.

`SELECTORS` maps each registry name (the values of `config.select.name`) to the library
function that makes the choice; the scores or gradient proxies they consume come from a
pretrained model (`jaxbd.select.scores`, `jaxbd.select.forgetting`, `gradient_proxy`), and
`jaxbd.pipeline.selection.run_selection` wires the whole phase into an experiment.
`SelectSettings` is the validated form of `config.select` (`jaxbd.select.settings`).

| name         | function                | input                                         |
| ------------ | ----------------------- | --------------------------------------------- |
| `random`     | `random_subset`         | labels and a PRNG key                         |
| `el2n`       | `rank_within_class`     | `el2n_scores` of early-training models        |
| `grand`      | `rank_within_class`     | `grand_scores` (per-example gradient norms)   |
| `forgetting` | `rank_within_class`     | `forgetting.scores` of a training run         |
| `craig`      | `craig`                 | `gradient_proxy` of a pretrained model        |
| `grad_align` | `grad_align`            | logits and features of a pretrained model     |
"""

from jaxbd.select import forgetting
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
    CraigSettings,
    ForgettingSettings,
    ScoreSettings,
    SelectSettings,
)

__all__ = [
    "METHODS",
    "SELECTORS",
    "CraigSettings",
    "ForgettingSettings",
    "ScoreSettings",
    "SelectSettings",
    "Selection",
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
]
