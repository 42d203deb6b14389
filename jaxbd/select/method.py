"""The selection plug-in contract: what a method declares it needs, and what it is given.

A method is one module holding its library function and a `Method` that declares its needs
(a pretraining run, an ensemble of them, statistics recorded during it, the final model's
outputs, which sub-section of `config.select` it reads) and adapts the pipeline's `Inputs`
to the library function; `jaxbd.select.registry` lists them. The pipeline
(`jaxbd.pipeline.stages.selection`) and the settings (`SelectSettings`) dispatch by these
declarations alone, never by a method's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import flax.struct
import jax
import numpy as np

from jaxbd.select.base import Selection

if TYPE_CHECKING:  # the forgetting method's module declares its `Method` with this one
    from jaxbd.select import forgetting as forgetting_lib


@flax.struct.dataclass
class PretrainRecord:
    """What a pretraining run records for scoring (device arrays, checkpointed).

    Attributes:
        el2n: float32[E, N], EL2N of every training example after each epoch (inference
            mode, un-augmented); rows of epochs that were not needed stay 0.
        correct: bool[E, N], whether each example was classified correctly after each epoch
            (same conditions; the study's once-per-epoch forgetting check).
        grand: float32[N], sum of GraNd scores over the scoring epochs.
        forgetting: per-presentation forgetting statistics (Toneva et al. 2019).
    """

    el2n: jax.Array
    correct: jax.Array
    grand: jax.Array
    forgetting: forgetting_lib.ForgettingState


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inputs:
    """What a method is given to select with.

    Attributes:
        labels: int[N], the observed (possibly poisoned) labels.
        fraction: `select.fraction`, the subset size for methods whose `Method.fraction`.
        key: the selection's own PRNG stream ("select").
        num_classes: C.
        settings: the method's sub-settings (`Method.section` of `SelectSettings`) or None.
        effective: `SelectSettings.effective()`, the settings after the variant.
        records: one `PretrainRecord` per pretraining member (empty without pretraining).
        logits: float[N, C] of member 0's final model on the training set (`outputs`).
        features: float[N, D], its penultimate features (`outputs`).
    """

    labels: np.ndarray
    fraction: float
    key: jax.Array
    num_classes: int
    settings: Any = None
    effective: dict[str, Any] = dataclasses.field(default_factory=dict)
    records: Sequence[PretrainRecord] = ()
    logits: Any = None
    features: Any = None


def no_settings(select: Any) -> dict[str, Any]:
    """`Method.effective` of a method with no variant-dependent settings: {}."""
    del select
    return {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
    """A selection method and what it needs.

    Attributes:
        selector: the library function that makes the choice (`SELECTORS`).
        run: `Inputs -> (Selection, scores float[N] or None)`; scores are saved with the
            selection (`selection.npz`).
        pretrain: it reads a pretraining run on the full poisoned set (and the
            `select.pretrain_*` fields); False: no data beyond the labels.
        ensemble: `effective()["ensemble_size"]` members pretrain (possibly vmapped
            together), each only up to its last scoring epoch.
        gradient_norms: the pretraining records GraNd scores at the scoring epochs; such a
            run is the method's own (a shared run does not record them).
        presentations: the pretraining records per-presentation correctness.
        outputs: it reads the logits and features of member 0's final model.
        section: the sub-section of `config.select` it reads, or None.
        settings: that sub-section's frozen, self-validating settings dataclass (a field of
            `SelectSettings` named `section`; methods may share one, as EL2N and GraNd do).
        variants: it reads `select.variant` (a "study" variant).
        fraction: `select.fraction` sets its subset size (False: it keeps what it does not
            flag, a poison detector used as a selection).
        effective: `SelectSettings -> dict`, the settings it actually uses after the variant.
    """

    selector: Callable[..., Selection]
    run: Callable[[Inputs], tuple[Selection, np.ndarray | None]]
    pretrain: bool = True
    ensemble: bool = False
    gradient_norms: bool = False
    presentations: bool = False
    outputs: bool = False
    section: str | None = None
    settings: type | None = None
    variants: bool = False
    fraction: bool = True
    effective: Callable[[Any], dict[str, Any]] = no_settings

    @property
    def shares_pretraining(self) -> bool:
        """Whether it may reuse a pretraining run shared between methods of one seed
        (`select.pretrain_dir`): not when the run must record gradient norms."""
        return self.pretrain and not self.gradient_norms


def own_settings(section: str) -> Callable[[Any], dict[str, Any]]:
    """`Method.effective` of a method without a variant: its sub-settings as a dict."""

    def effective(select: Any) -> dict[str, Any]:
        return dataclasses.asdict(getattr(select, section))

    return effective
