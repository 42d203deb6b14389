"""The `config.select` section as settings: which selection method, and how it scores.

`SelectSettings` holds the fields every method shares and one sub-settings field per
section the registered methods declare (`jaxbd.select.registry.SECTIONS`: `ScoreSettings`,
`CraigSettings`, ... each defined beside its method); `config.select` is derived from it
(`jaxbd.settings.config_section`), and `jaxbd.settings.from_config` turns a bad value into a
`ConfigError` naming the field:

    settings = from_config(SelectSettings, config.select, "config.select")
    settings.effective()  # what the method actually uses, after `variant`

What each method reads, and so what is validated for it, is its registry declaration.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxbd.select.activation_clustering import ActivationClusteringSettings
from jaxbd.select.craig import CraigSettings
from jaxbd.select.forgetting import ForgettingSettings
from jaxbd.select.registry import METHODS, SECTIONS, SELECTION_METHODS
from jaxbd.select.scores import PARALLEL, ScoreSettings
from jaxbd.select.spectral import SpectralSettings
from jaxbd.settings import require

VARIANTS = ("standard", "study")
"""`SelectSettings.variant`: "standard" methods, or the earlier study's reproduction."""
DETECTORS = tuple(name for name, m in SELECTION_METHODS.items() if not m.fraction)
"""The methods that keep what a poison detector does not flag: `fraction` does not apply."""

__all__ = [
    "DETECTORS",
    "PARALLEL",
    "VARIANTS",
    "ActivationClusteringSettings",
    "CraigSettings",
    "ForgettingSettings",
    "ScoreSettings",
    "SelectSettings",
    "SpectralSettings",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _SelectFields:
    """Coreset selection before training; `name=None` trains on the full set.

    Attributes:
        name: None, or a selection method (`METHODS`, the keys of `SELECTORS`).
        fraction: subset size round(fraction · N), split over classes; in (0, 1]. Ignored by
            the detectors (`DETECTORS`: spectral, activation_clustering), which keep what
            they do not flag, so that one grid can hold coreset methods and detectors.
        variant: "standard", or "study" to reproduce the earlier study (`VARIANTS`; see
            `effective`).
        pretrain_epochs: epochs of the pretraining run on the full poisoned set (≥ 1).
        pretrain_warmup_epochs: its linear warm-up, in [0, pretrain_epochs).
        pretrain_dir: a directory to share the pretraining run between methods of the same
            seed; None: each run pretrains in its own workdir.
        score: EL2N/GraNd settings (`ScoreSettings`).
        forgetting: forgetting settings (`ForgettingSettings`).
        craig: CRAIG settings (`CraigSettings`).
        spectral: Spectral Signatures settings (`SpectralSettings`).
        activation_clustering: Activation Clustering settings (`ActivationClusteringSettings`).

    The sub-settings are the registered methods' (`jaxbd.select.registry.SECTIONS`, one field
    each, after the fields above): a method with settings of its own adds its section by
    being registered.

    The sub-settings always validate their own fields; the checks here apply only when a
    method is named, and only to the fields it reads (its `Method`): the pretraining fields
    for a method that pretrains, `variant` for one with a study variant, the score epochs
    against `pretrain_epochs` for one that reads `score`.
    """

    name: str | None = None
    fraction: float = 0.5
    variant: str = "standard"
    pretrain_epochs: int = 20
    pretrain_warmup_epochs: int = 0
    pretrain_dir: str | None = None

    def __post_init__(self):
        require(
            self.name is None or self.name in METHODS,
            "name",
            f"must be None (full set) or one of {list(METHODS)}",
            self.name,
        )
        if self.name is None:
            return
        method = SELECTION_METHODS[self.name]
        # Only what the method reads is checked (`Method`): CRAIG never reads score.*, random
        # no pretraining field, a poison detector (spectral) not `fraction`.
        if method.fraction:
            require(0 < self.fraction <= 1, "fraction", "must be in (0, 1]", self.fraction)
        if method.variants:
            require(
                self.variant in VARIANTS,
                "variant",
                f"must be one of {list(VARIANTS)}",
                self.variant,
            )
        if not method.pretrain:
            return
        epochs = self.pretrain_epochs
        require(epochs >= 1, "pretrain_epochs", "must be >= 1", epochs)
        require(
            0 <= self.pretrain_warmup_epochs < epochs,
            "pretrain_warmup_epochs",
            f"must be in [0, pretrain_epochs={epochs})",
            self.pretrain_warmup_epochs,
        )
        if method.section == "score":
            score_epochs = tuple(self.score.score_epochs)
            require(
                len(score_epochs) > 0 and all(1 <= e <= epochs for e in score_epochs),
                "score.score_epochs",
                f"must be a non-empty list of epochs in [1, pretrain_epochs={epochs}]",
                list(score_epochs),
            )

    def effective(self) -> dict[str, Any]:
        """The settings the method actually uses, after applying `variant` (its
        `Method.effective`; {} without a method).

        The "study" variant reproduces the earlier study: EL2N/GraNd from one model, averaged
        over epochs 2..pretrain_epochs, keep easy; forgetting checked once per epoch on the
        un-augmented set, never-learned scored 0, keep easy. The detectors have no study
        variant: they give their own settings. Methods without such settings (random, craig,
        grad_align, or no selection) give {}.

        Returns:
            For "el2n"/"grand": ensemble_size, score_epochs, keep, offset. For "forgetting":
            per_epoch, never_learned, keep, offset. For "spectral": poison_rate. For
            "activation_clustering": dims, reduction, min_cluster.
        """
        if self.name is None:
            return {}
        return SELECTION_METHODS[self.name].effective(self)


# The registered methods' sections, as fields after the shared ones (in registry order).
SelectSettings = dataclasses.make_dataclass(
    "SelectSettings",
    [(name, cls, dataclasses.field(default_factory=cls)) for name, cls in SECTIONS.items()],
    bases=(_SelectFields,),
    frozen=True,
    kw_only=True,
)
SelectSettings.__module__ = __name__
SelectSettings.__doc__ = _SelectFields.__doc__
