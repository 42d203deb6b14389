"""Spectral Signatures (Tran, Li, Madry 2018, "Spectral signatures in backdoor attacks").

A training-set detector used as a selection method: in every class (by observed label) the
penultimate features R of a model trained on the poisoned set are centred, v is the top right
singular vector of the centred matrix, and example i scores ((R_i − μ_c)·v)². Poisons form a
sub-population that shifts the class mean along one direction, so they dominate the top
singular direction and score high. `spectral_filter` removes the ⌈1.5·ε·n_c⌉ highest scores
of each class (ε = the expected poison rate; the paper's 1.5 margin) and keeps the rest.

The cut follows ε rather than a fixed share of each class: a fixed 15% cut (as some
re-implementations use) leaves most poisons in place when a dirty-label attack makes the
target class about half poison. ε is the caller's expectation; a study sets it to its poison
rate (`config.select.spectral.poison_rate`).

The number kept is what remains after the cut, not `round(fraction · N)`: the selection's
`fraction` does not apply to this method.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxbd.select.base import Selection, make_selection
from jaxbd.select.method import Inputs, Method, own_settings
from jaxbd.settings import require

REMOVAL_MARGIN = 1.5
"""Tran et al.'s margin: 1.5·ε·n_c examples are removed from a class of n_c."""

__all__ = [
    "REMOVAL_MARGIN",
    "check_features",
    "removal_count",
    "remove_highest",
    "spectral_filter",
    "spectral_scores",
]


def check_features(features, labels, num_classes):
    """Host copies of a detector's inputs, checked (shared with Activation Clustering).

    Returns:
        (features float64[N, D], labels int64[N], num_classes), num_classes defaulting to
        max(labels) + 1.

    Raises:
        ValueError: for mismatched shapes, non-finite features or labels out of range.
    """
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {features.shape}")
    if features.shape[0] != labels.size:
        raise ValueError(f"{features.shape[0]} feature rows for {labels.size} labels")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or infinite values")
    return features, labels.astype(np.int64), num_classes


def spectral_scores(features, labels, num_classes: int | None = None) -> np.ndarray:
    """Tran et al.'s outlier score of every example, computed per observed class.

    For class c with members R (n_c × D) and mean μ_c, v_c is the top right singular vector of
    R − μ_c and score_i = ((R_i − μ_c)·v_c)², i.e. the squared projection on the direction of
    largest variance. The sign of v_c, which an SVD leaves arbitrary, cancels in the square.
    Computed on the host in float64 (one SVD per class); a class of one example scores 0.

    Args:
        features: float[N, D] penultimate features of a model trained on the poisoned set.
        labels: int[N] observed (possibly poisoned) labels in [0, num_classes).
        num_classes: C; defaults to max(labels) + 1.

    Returns:
        float32[N] non-negative scores; higher = more likely a poison.

    Raises:
        ValueError: for mismatched shapes, non-finite features or labels out of range.
    """
    features, labels, num_classes = check_features(features, labels, num_classes)
    scores = np.zeros(labels.size, np.float64)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if members.size < 2:
            continue  # nothing to centre against: the score is 0
        centred = features[members] - features[members].mean(axis=0)
        # Only the top right singular vector is needed; the thin SVD of n_c × D is cheap
        # for penultimate widths (D ≤ 512) and exact, unlike a power iteration.
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        scores[members] = (centred @ vt[0]) ** 2
    return scores.astype(np.float32)


def _check_rate(poison_rate) -> None:
    if (
        isinstance(poison_rate, bool)
        or not isinstance(poison_rate, int | float | np.floating)
        or not 0 < poison_rate < 1 / REMOVAL_MARGIN
    ):
        raise ValueError(f"poison_rate must be in (0, 2/3), got {poison_rate!r}")


def removal_count(class_size: int, poison_rate: float) -> int:
    """⌈1.5·ε·n_c⌉, capped at n_c: how many examples `spectral_filter` removes from a class.

    Computed on ε·n_c rounded to 12 decimals first, so that a product that is an integer in
    exact arithmetic (1.5 · 0.1 · 40 = 6) is not pushed up by floating-point error.
    """
    return min(class_size, math.ceil(round(REMOVAL_MARGIN * poison_rate * class_size, 12)))


def spectral_filter(
    features, labels, *, poison_rate: float = 0.05, num_classes: int | None = None
) -> Selection:
    """Spectral Signatures as a selection: per class, drop the highest `spectral_scores`.

    Args:
        features: float[N, D] penultimate features of a model trained on the poisoned set.
        labels: int[N] observed labels.
        poison_rate: ε, the expected fraction of poisons in a class, in (0, 2/3) (so that
            1.5·ε < 1); each class loses `removal_count(n_c, ε)` examples.
        num_classes: C; defaults to max(labels) + 1.

    Returns:
        An unweighted `Selection` of every example not removed (N − Σ_c removal_count).
        Equal scores are removed in index order (the lower index first).

    Raises:
        ValueError: for a poison rate outside (0, 2/3) or bad inputs (see `spectral_scores`).
    """
    _check_rate(poison_rate)  # before the SVDs, which a bad rate would waste
    scores = spectral_scores(features, labels, num_classes)
    return remove_highest(scores, labels, poison_rate=poison_rate)


def remove_highest(scores, labels, *, poison_rate: float) -> Selection:
    """Keeps each class but its `removal_count(n_c, poison_rate)` highest scores.

    `spectral_filter` is `remove_highest(spectral_scores(...), ...)`; the pipeline calls the
    two steps itself to save the scores with the selection.

    Args:
        scores: float[N], higher = more suspect.
        labels: int[N] observed labels.
        poison_rate: ε in (0, 2/3).

    Returns:
        An unweighted `Selection`; equal scores are removed lower index first.

    Raises:
        ValueError: for a poison rate outside (0, 2/3), NaN scores or mismatched lengths.
    """
    _check_rate(poison_rate)
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores for {labels.size} labels")
    if np.any(np.isnan(scores)):
        raise ValueError("scores contain NaN")
    kept = np.ones(labels.size, bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        # Highest score first; lexsort's stability orders equal scores by index.
        order = members[np.lexsort((members, -scores[members]))]
        kept[order[: removal_count(members.size, poison_rate)]] = False
    return make_selection(np.flatnonzero(kept))


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


def _run(inputs: Inputs) -> tuple[Selection, np.ndarray]:
    # `spectral_filter` in two steps, so that the scores are saved with the selection (the
    # cut can be re-drawn without pretraining again).
    scores = spectral_scores(np.asarray(inputs.features), inputs.labels, inputs.num_classes)
    selection = remove_highest(scores, inputs.labels, poison_rate=inputs.settings.poison_rate)
    return selection, scores


METHOD = Method(
    selector=spectral_filter,
    run=_run,
    outputs=True,
    section="spectral",
    settings=SpectralSettings,
    fraction=False,
    effective=own_settings("spectral"),
)
"""One pretraining run; its final model's features. Keeps what it does not flag."""
