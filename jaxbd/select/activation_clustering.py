"""Activation Clustering (Chen et al. 2018, "Detecting backdoor attacks on deep neural
networks by activation clustering").

A training-set detector used as a selection method. In every class (by observed label) the
penultimate features of a model trained on the poisoned set are centred, reduced to `dims`
dimensions (FastICA, as in the paper, or PCA), and split into two clusters by k-means; the
smaller cluster is flagged as poison when it holds fewer than `min_cluster` (35%) of the
class. Per class over the whole training set, never per batch; seeded per class from the
caller's key, so the flags are a deterministic function of (features, labels, key). Classes
that cannot be clustered (fewer than `dims + 2` members, all-equal features) flag nothing
(the rules: docs/selection.md).

`activation_clustering_filter` keeps the unflagged examples: the number kept is what remains,
not `round(fraction · N)`.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import numpy as np

from jaxbd.select.base import Selection, make_selection
from jaxbd.select.method import Inputs, Method, own_settings
from jaxbd.select.spectral import check_features
from jaxbd.settings import require, require_int

REDUCTIONS = ("ica", "pca")
"""How the centred features are reduced before k-means (`config.select.activation_clustering
.reduction`): FastICA (the paper's choice) or PCA."""

KMEANS_INIT = 50
"""k-means restarts (scikit-learn's `n_init`), fixed: its default changed between releases.
More than scikit-learn's 10: after whitening, a 20% cluster is at most 2.5 standard deviations
from the rest along any direction, and has almost no excess kurtosis (a 21/79 two-point
mixture has none), so ICA does not isolate it in one component. On a planted 20% cluster
(300 × 32 Gaussian features, shifted 6σ) k-means missed it in 9 of 20 trials with 10 restarts,
in none with 30 or 50."""

ICA_MAX_ITER = 1000
"""FastICA's iteration limit (scikit-learn's default, 200, often stops short on features of
dead or saturated units)."""

__all__ = [
    "KMEANS_INIT",
    "REDUCTIONS",
    "activation_clustering",
    "activation_clustering_filter",
    "class_seed",
]


def class_seed(key: jax.Array, c: int) -> int:
    """The scikit-learn `random_state` of class c: a draw from `fold_in(key, c)`.

    Per class, so that one class's flags do not depend on how many classes precede it.
    """
    bits = jax.random.bits(jax.random.fold_in(key, c), (), dtype=np.uint32)
    return int(bits) & 0x7FFFFFFF


def _reduce(centred: np.ndarray, components: int, reduction: str, seed: int) -> np.ndarray:
    """The class's centred features float64[n_c, D] reduced to float64[n_c, components]."""
    # scikit-learn is imported when used: it adds about a second to `import jaxbd.select`,
    # which most selections never need.
    from sklearn.decomposition import PCA, FastICA
    from sklearn.exceptions import ConvergenceWarning

    if reduction == "pca":
        return PCA(n_components=components, random_state=seed).fit_transform(centred)
    ica = FastICA(
        n_components=components,
        whiten="unit-variance",
        max_iter=ICA_MAX_ITER,
        random_state=seed,
    )
    with warnings.catch_warnings():
        # The unmixing only prepares the data for k-means; an ICA short of its tolerance
        # still leaves a separated sub-population separated (the whitening alone is PCA).
        warnings.simplefilter("ignore", ConvergenceWarning)
        return ica.fit_transform(centred)


def activation_clustering(
    features,
    labels,
    num_classes: int | None = None,
    *,
    key: jax.Array,
    dims: int = 10,
    reduction: str = "ica",
    min_cluster: float = 0.35,
) -> np.ndarray:
    """Chen et al.'s poison flags, per observed class.

    Args:
        features: float[N, D] penultimate features of a model trained on the poisoned set.
        labels: int[N] observed (possibly poisoned) labels in [0, num_classes).
        num_classes: C; defaults to max(labels) + 1.
        key: PRNG key; class c seeds the reduction and k-means with `class_seed(key, c)`.
        dims: components kept by the reduction (the paper: 10), ≥ 1; a class spanning fewer
            dimensions keeps as many as it spans.
        reduction: "ica" (FastICA) or "pca" (`REDUCTIONS`).
        min_cluster: in (0, 0.5]; the smaller of the two clusters is flagged when it holds
            fewer than min_cluster · n_c members (strictly).

    Returns:
        bool[N], True for flagged (suspected poison) examples; never set in a class of fewer
        than `dims + 2` members or of identical features (see the module docstring).

    Raises:
        ValueError: for bad settings, mismatched shapes, non-finite features or labels out of
            range.
    """
    if isinstance(dims, bool) or not isinstance(dims, int | np.integer) or dims < 1:
        raise ValueError(f"dims must be an integer >= 1, got {dims!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    if (
        isinstance(min_cluster, bool)
        or not isinstance(min_cluster, int | float | np.floating)
        or not 0 < min_cluster <= 0.5
    ):
        raise ValueError(f"min_cluster must be in (0, 0.5], got {min_cluster!r}")
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    features, labels, num_classes = check_features(features, labels, num_classes)
    flagged = np.zeros(labels.size, bool)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if members.size < dims + 2:
            continue
        centred = features[members] - features[members].mean(axis=0)
        rank = int(np.linalg.matrix_rank(centred))
        if rank == 0:
            continue
        seed = class_seed(key, c)
        # One thread: these problems are small, and scikit-learn's OpenMP threads spin
        # against XLA's pool in the same process (a 300 × 10 k-means took 3.4 s instead of
        # 0.01 s on two busy cores).
        with threadpool_limits(limits=1):
            reduced = _reduce(centred, min(dims, rank), reduction, seed)
            assignment = KMeans(n_clusters=2, n_init=KMEANS_INIT, random_state=seed).fit_predict(
                reduced
            )
        sizes = np.bincount(assignment, minlength=2)
        smaller = int(np.argmin(sizes))
        if sizes[smaller] < min_cluster * members.size:
            flagged[members[assignment == smaller]] = True
    return flagged


def activation_clustering_filter(
    features,
    labels,
    *,
    key: jax.Array,
    dims: int = 10,
    reduction: str = "ica",
    min_cluster: float = 0.35,
    num_classes: int | None = None,
) -> Selection:
    """Activation Clustering as a selection: keeps every example it does not flag.

    Args:
        features: float[N, D] penultimate features.
        labels: int[N] observed labels.
        key: PRNG key (see `activation_clustering`).
        dims: components of the reduction.
        reduction: "ica" or "pca".
        min_cluster: the flagging threshold on the smaller cluster's share of its class.
        num_classes: C; defaults to max(labels) + 1.

    Returns:
        An unweighted `Selection` of the unflagged examples.

    Raises:
        ValueError: as `activation_clustering`.
    """
    flagged = activation_clustering(
        features,
        labels,
        num_classes,
        key=key,
        dims=dims,
        reduction=reduction,
        min_cluster=min_cluster,
    )
    return make_selection(np.flatnonzero(~flagged))


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


def _run(inputs: Inputs) -> tuple[Selection, None]:
    a = inputs.settings
    selection = activation_clustering_filter(
        np.asarray(inputs.features),
        inputs.labels,
        key=inputs.key,
        dims=a.dims,
        reduction=a.reduction,
        min_cluster=a.min_cluster,
        num_classes=inputs.num_classes,
    )
    return selection, None


METHOD = Method(
    selector=activation_clustering_filter,
    run=_run,
    outputs=True,
    section="activation_clustering",
    settings=ActivationClusteringSettings,
    fraction=False,
    effective=own_settings("activation_clustering"),
)
"""One pretraining run; its final model's features. Keeps what it does not flag."""
