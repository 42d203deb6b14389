"""Activation Clustering: flags a planted minority cluster, nothing on a unimodal class, and
agrees with scikit-learn run directly on the same data."""

import re
import warnings

import jax
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from jaxbd.configs import base_config
from jaxbd.select import (
    SELECTORS,
    ActivationClusteringSettings,
    SelectSettings,
    activation_clustering,
    activation_clustering_filter,
)
from jaxbd.select.activation_clustering import ICA_MAX_ITER, KMEANS_INIT, class_seed
from jaxbd.settings import ConfigError, from_config

KEY = jax.random.key(0)


def planted(seed=0, n=300, dim=32, poisoned=0.2, shift=6.0, num_classes=2):
    """Gaussian classes; in class 0 a `poisoned` share is shifted along one direction."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num_classes * n, dim)) + rng.normal(size=dim)
    labels = np.repeat(np.arange(num_classes), n)
    direction = rng.normal(size=dim)
    poison = np.zeros(labels.size, bool)
    poison[rng.choice(n, round(poisoned * n), replace=False)] = True
    features[poison] += shift * direction / np.linalg.norm(direction)
    return features.astype(np.float32), labels, poison


def sklearn_flags(features, labels, c, *, key, dims=10, reduction="ica", min_cluster=0.35):
    """The method written out with scikit-learn, for one class."""
    members = np.flatnonzero(labels == c)
    x = features[members].astype(np.float64)
    x = x - x.mean(axis=0)
    seed = class_seed(key, c)
    if reduction == "ica":
        reducer = FastICA(
            n_components=dims, whiten="unit-variance", max_iter=ICA_MAX_ITER, random_state=seed
        )
    else:
        reducer = PCA(n_components=dims, random_state=seed)
    with threadpool_limits(limits=1), warnings.catch_warnings():  # as the library runs it
        warnings.simplefilter("ignore", ConvergenceWarning)
        assignment = KMeans(n_clusters=2, n_init=KMEANS_INIT, random_state=seed).fit_predict(
            reducer.fit_transform(x)
        )
    sizes = np.bincount(assignment, minlength=2)
    smaller = np.argmin(sizes)
    flags = np.zeros(labels.size, bool)
    if sizes[smaller] < min_cluster * members.size:
        flags[members[assignment == smaller]] = True
    return flags


@pytest.mark.parametrize("reduction", ["ica", "pca"])
def test_flags_a_planted_cluster_and_nothing_on_a_unimodal_class(reduction):
    features, labels, poison = planted()
    flags = activation_clustering(features, labels, 2, key=KEY, reduction=reduction)
    assert flags.dtype == bool and flags.shape == labels.shape
    assert flags[poison].all()
    assert (flags & ~poison).sum() <= 3  # a clean point or two may fall on the cluster's side
    assert not flags[labels == 1].any()  # class 1 is one Gaussian blob
    expected = sklearn_flags(features, labels, 0, key=KEY, reduction=reduction)
    expected |= sklearn_flags(features, labels, 1, key=KEY, reduction=reduction)
    np.testing.assert_array_equal(flags, expected)


@pytest.mark.parametrize("seed", range(4))
def test_a_gaussian_blob_is_never_flagged(seed):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(400, 24)).astype(np.float32)
    flags = activation_clustering(
        features, np.zeros(400, int), 1, key=jax.random.key(seed), reduction="ica"
    )
    assert not flags.any()


def test_filter_keeps_the_unflagged_and_is_registered():
    features, labels, poison = planted(seed=1)
    selection = activation_clustering_filter(features, labels, key=KEY, num_classes=2)
    flags = activation_clustering(features, labels, 2, key=KEY)
    np.testing.assert_array_equal(selection.indices, np.flatnonzero(~flags))
    assert not np.isin(np.flatnonzero(poison), selection.indices).any()
    assert np.all(selection.weights == 1)
    assert SELECTORS["activation_clustering"] is activation_clustering_filter


def test_deterministic_per_key_and_per_class():
    features, labels, _ = planted(seed=2, poisoned=0.3, shift=3.0)
    a = activation_clustering(features, labels, 2, key=KEY)
    np.testing.assert_array_equal(a, activation_clustering(features, labels, 2, key=KEY))
    # A class's flags do not depend on the other classes (its seed is folded from c).
    only_first = labels == 0
    b = activation_clustering(features[only_first], labels[only_first], 2, key=KEY)
    np.testing.assert_array_equal(a[only_first], b)


def test_unclusterable_classes_flag_nothing():
    rng = np.random.default_rng(3)
    # Fewer than dims + 2 = 12 examples: skipped even with an obvious outlier.
    small = rng.normal(size=(11, 16))
    small[0] += 100
    assert not activation_clustering(small, np.zeros(11, int), key=KEY).any()
    # Identical features: nothing to cluster.
    assert not activation_clustering(np.ones((50, 16)), np.zeros(50, int), key=KEY).any()


def test_features_spanning_fewer_than_dims_are_reduced_to_their_rank():
    features, labels, poison = planted(dim=3, shift=8.0, num_classes=1)
    # Three dimensions, and a fourth feature that is a copy of the first (rank 3 of 4).
    features = np.concatenate([features, features[:, :1]], axis=1)
    flags = activation_clustering(features, labels, key=KEY, dims=10)
    assert (flags == poison).mean() > 0.95


def test_bad_arguments_are_rejected():
    x, y = np.zeros((20, 4)), np.zeros(20, int)
    with pytest.raises(ValueError, match="dims must be an integer >= 1"):
        activation_clustering(x, y, key=KEY, dims=0)
    with pytest.raises(ValueError, match=r"reduction must be one of \['ica', 'pca'\]"):
        activation_clustering(x, y, key=KEY, reduction="lda")
    with pytest.raises(ValueError, match=r"min_cluster must be in \(0, 0.5\]"):
        activation_clustering(x, y, key=KEY, min_cluster=0.6)
    with pytest.raises(ValueError, match="NaN or infinite"):
        activation_clustering(np.full((20, 4), np.inf), y, key=KEY)


def test_settings_defaults_and_effective():
    section = {**base_config().select.to_dict(), "name": "activation_clustering"}
    s = from_config(SelectSettings, section, "config.select")
    assert s.activation_clustering == ActivationClusteringSettings(
        dims=10, reduction="ica", min_cluster=0.35
    )
    assert s.effective() == {"dims": 10, "reduction": "ica", "min_cluster": 0.35}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dims", 0, "must be an integer >= 1"),
        ("dims", 2.5, "must be an integer >= 1"),
        ("reduction", "lda", "must be one of ['ica', 'pca']"),
        ("min_cluster", 0.0, "must be in (0, 0.5]"),
        ("min_cluster", 0.6, "must be in (0, 0.5]"),
    ],
)
def test_settings_name_the_field(field, value, message):
    section = base_config().select.to_dict()
    section["name"] = "activation_clustering"
    section["activation_clustering"][field] = value
    pattern = "^" + re.escape(f"config.select.activation_clustering.{field}: {message}")
    with pytest.raises(ConfigError, match=pattern):
        from_config(SelectSettings, section, "config.select")
