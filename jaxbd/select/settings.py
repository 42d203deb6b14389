"""The `config.select` section as settings: which selection method, and how it scores.

Frozen dataclasses whose defaults `config.select` is derived from
(`jaxbd.settings.config_section`); each validates itself, and `jaxbd.settings.from_config`
turns a bad value into a `ConfigError` naming the field:

    settings = from_config(SelectSettings, config.select, "config.select")
    settings.effective()  # what the method actually uses, after `variant`

Choice lists are the libraries' own: method names from `SELECTORS`, keep policies from
`jaxbd.select.ranking.KEEP`, proxies from `jaxbd.select.craig.PROXIES`, greedy variants from
`jaxbd.select.greedy.GREEDY`, reductions from `jaxbd.select.activation_clustering.REDUCTIONS`.
What each method reads, and so what is validated for it, is its registry declaration.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxbd.select.activation_clustering import REDUCTIONS
from jaxbd.select.craig import PROXIES
from jaxbd.select.greedy import GREEDY
from jaxbd.select.ranking import KEEP
from jaxbd.select.registry import METHODS, SELECTION_METHODS
from jaxbd.select.spectral import REMOVAL_MARGIN
from jaxbd.settings import require, require_int

VARIANTS = ("standard", "study")
"""`SelectSettings.variant`: "standard" methods, or the earlier study's reproduction."""
PARALLEL = ("auto", "vmap", "sequential")
"""How an EL2N/GraNd ensemble trains: members in one vmapped step, one after another, or
"auto" (sequential on the CPU, vmap on accelerators)."""
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


def _check_keep(keep: str, offset: float) -> None:
    require(keep in KEEP, "keep", f"must be one of {list(KEEP)}", keep)
    require(0 <= offset < 1, "offset", "must be in [0, 1)", offset)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoreSettings:
    """EL2N and GraNd scoring (Paul, Ganguli, Dziugaite 2021, "Deep learning on a data diet").

    Attributes:
        ensemble_size: models whose scores are averaged (the paper used 10).
        score_epochs: scores taken after these pretraining epochs, averaged (each in
            [1, pretrain_epochs], checked by `SelectSettings`).
        keep: "hard" (highest scores first) or "easy" (`KEEP`).
        offset: fraction of each class's ranking skipped first, in [0, 1).
        chunk_size: GraNd's examples per `vmap(grad)` call.
        parallel: how the ensemble trains (`PARALLEL`).
    """

    ensemble_size: int = 4
    score_epochs: tuple[int, ...] = (10,)
    keep: str = "hard"
    offset: float = 0.0
    chunk_size: int = 128
    parallel: str = "auto"

    def __post_init__(self):
        if isinstance(self.score_epochs, list):
            object.__setattr__(self, "score_epochs", tuple(self.score_epochs))
        require(self.ensemble_size >= 1, "ensemble_size", "must be >= 1", self.ensemble_size)
        _check_keep(self.keep, self.offset)
        require(
            self.parallel in PARALLEL, "parallel", f"must be one of {list(PARALLEL)}", self.parallel
        )
        require(self.chunk_size >= 1, "chunk_size", "must be >= 1", self.chunk_size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ForgettingSettings:
    """Forgetting scores (Toneva et al. 2019, "An empirical study of example forgetting
    during deep neural network learning").

    Attributes:
        keep: "hard" (most forgotten, never learned first) or "easy" (`KEEP`).
        offset: fraction of each class's ranking skipped first, in [0, 1).
    """

    keep: str = "hard"
    offset: float = 0.0

    def __post_init__(self):
        _check_keep(self.keep, self.offset)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CraigSettings:
    """CRAIG (Mirzasoleiman, Bilmes, Leskovec 2020, "Coresets for data-efficient training of
    machine learning models").

    Attributes:
        proxy: the gradient proxy, one of `PROXIES` (see `jaxbd.select.craig.gradient_proxy`).
        greedy: the facility-location greedy, one of `GREEDY` ("lazy" picks what "exact"
            does, faster).
        epsilon: stochastic greedy's ε, in (0, 1).
    """

    proxy: str = "error"
    greedy: str = "lazy"
    epsilon: float = 0.1

    def __post_init__(self):
        require(self.proxy in PROXIES, "proxy", f"must be one of {list(PROXIES)}", self.proxy)
        require(self.greedy in GREEDY, "greedy", f"must be one of {list(GREEDY)}", self.greedy)
        require(0 < self.epsilon < 1, "epsilon", "must be in (0, 1)", self.epsilon)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpectralSettings:
    """Spectral Signatures (Tran, Li, Madry 2018, "Spectral signatures in backdoor attacks").

    Attributes:
        poison_rate: ε, the expected fraction of poisons in a class, in (0, 2/3); each class
            loses its ⌈1.5·ε·n_c⌉ highest scores. Not read from the attack section: a study
            sets it to its poison rate (the default, 0.05, is a generic guess).
    """

    poison_rate: float = 0.05

    def __post_init__(self):
        require(
            0 < self.poison_rate < 1 / REMOVAL_MARGIN,
            "poison_rate",
            f"must be in (0, 2/3) ({REMOVAL_MARGIN}·poison_rate of each class is removed)",
            self.poison_rate,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ActivationClusteringSettings:
    """Activation Clustering (Chen et al. 2018, "Detecting backdoor attacks on deep neural
    networks by activation clustering").

    Attributes:
        dims: dimensions the centred features of a class are reduced to (the paper: 10), ≥ 1;
            classes of fewer than dims + 2 examples are not clustered.
        reduction: "ica" (FastICA, the paper's) or "pca" (`REDUCTIONS`).
        min_cluster: the smaller k-means cluster is flagged when it holds fewer than this
            share of its class (the paper: 0.35), in (0, 0.5].
    """

    dims: int = 10
    reduction: str = "ica"
    min_cluster: float = 0.35

    def __post_init__(self):
        require_int(self.dims, "dims", 1)
        require(
            self.reduction in REDUCTIONS,
            "reduction",
            f"must be one of {list(REDUCTIONS)}",
            self.reduction,
        )
        require(0 < self.min_cluster <= 0.5, "min_cluster", "must be in (0, 0.5]", self.min_cluster)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelectSettings:
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
        score: EL2N/GraNd settings.
        forgetting: forgetting settings.
        craig: CRAIG settings.
        spectral: Spectral Signatures settings.
        activation_clustering: Activation Clustering settings.

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
    score: ScoreSettings = dataclasses.field(default_factory=ScoreSettings)
    forgetting: ForgettingSettings = dataclasses.field(default_factory=ForgettingSettings)
    craig: CraigSettings = dataclasses.field(default_factory=CraigSettings)
    spectral: SpectralSettings = dataclasses.field(default_factory=SpectralSettings)
    activation_clustering: ActivationClusteringSettings = dataclasses.field(
        default_factory=ActivationClusteringSettings
    )

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
        # no pretraining field. `fraction` is checked for every method: the setup stage
        # sizes the subset with it.
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
