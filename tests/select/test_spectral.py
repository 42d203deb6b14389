"""Spectral Signatures: the score is Tran et al.'s SVD projection, the cut follows ε."""

import math
import re

import numpy as np
import pytest

from jaxbd.configs import base_config
from jaxbd.select import SELECTORS, SelectSettings, SpectralSettings, spectral_filter
from jaxbd.select.spectral import removal_count, remove_highest, spectral_scores
from jaxbd.settings import ConfigError, from_config


def planted(seed=0, n=500, dim=32, poisoned=0.1, shift=8.0, num_classes=3):
    """Gaussian classes; in class 0 a `poisoned` share is shifted along one unit direction.

    The clean features are anisotropic (one direction with standard deviation 2), so the top
    singular direction is the planted shift only because the shift dominates it.
    """
    rng = np.random.default_rng(seed)
    scale = np.ones(dim)
    scale[1] = 2.0
    features = rng.normal(size=(num_classes * n, dim)) * scale + rng.normal(size=dim)
    labels = np.repeat(np.arange(num_classes), n)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    poison = np.zeros(labels.size, bool)
    poison[rng.choice(n, round(poisoned * n), replace=False)] = True  # all in class 0
    features[poison] += shift * direction
    return features.astype(np.float32), labels, poison


def test_removes_a_planted_shifted_cluster():
    features, labels, poison = planted()
    selection = spectral_filter(features, labels, poison_rate=0.1, num_classes=3)
    removed = np.ones(labels.size, bool)
    removed[selection.indices] = False
    assert (removed & poison).sum() >= 0.9 * poison.sum()
    # The cut is ⌈1.5·ε·n_c⌉ in every class: 75 of 500.
    assert np.bincount(labels[removed], minlength=3).tolist() == [75, 75, 75]
    assert np.all(selection.weights == 1)
    assert np.all(np.diff(selection.indices) > 0)


def test_score_is_the_numpy_svd_projection():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(90, 12)).astype(np.float32) * 3 + 1
    labels = rng.integers(0, 4, size=90)
    scores = spectral_scores(features, labels, 4)
    assert scores.dtype == np.float32 and scores.shape == (90,)
    for c in range(4):
        r = features[labels == c].astype(np.float64)
        centred = r - r.mean(axis=0)
        v = np.linalg.svd(centred)[2][0]
        np.testing.assert_allclose(scores[labels == c], (centred @ v) ** 2, rtol=1e-5)


def test_classes_of_one_example_score_zero_and_absent_classes_are_skipped():
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    labels = np.array([0, 0, 0, 3])  # classes 1 and 2 are empty, class 3 has one example
    scores = spectral_scores(features, labels, 5)
    assert scores[3] == 0
    # An all-equal class (no variance) scores 0 too, without NaN.
    assert np.all(spectral_scores(np.ones((5, 3)), np.zeros(5, int), 1) == 0)


def test_removal_count_is_exact_and_capped():
    assert removal_count(40, 0.1) == 6  # 1.5·0.1·40 = 6, not 7 from rounding error
    assert removal_count(41, 0.1) == 7  # ⌈6.15⌉
    assert removal_count(1, 0.05) == 1  # ⌈0.075⌉
    assert removal_count(0, 0.05) == 0
    for n in range(200):
        assert removal_count(n, 0.3) == min(n, math.ceil(round(0.45 * n, 9)))


def test_remove_highest_breaks_ties_by_index():
    labels = np.zeros(8, int)
    scores = np.array([5, 1, 5, 5, 0, 0, 0, 0.0])  # ⌈1.5·0.2·8⌉ = 3 removed: 0, 2, 3
    kept = remove_highest(scores, labels, poison_rate=0.2).indices
    assert kept.tolist() == [1, 4, 5, 6, 7]
    assert spectral_filter(np.eye(8), labels, poison_rate=0.2).indices.size == 5


@pytest.mark.parametrize("rate", [0.0, 2 / 3, 0.7, -0.1, True, "0.1", float("nan")])
def test_bad_poison_rate_is_rejected(rate):
    with pytest.raises(ValueError, match="poison_rate must be in"):
        spectral_filter(np.zeros((4, 2)), np.zeros(4, int), poison_rate=rate)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="feature rows"):
        spectral_scores(np.zeros((4, 2)), np.zeros(3, int))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        spectral_scores(np.zeros((4, 2)), np.array([0, 1, 2, 0]), 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        spectral_scores(np.full((4, 2), np.nan), np.zeros(4, int))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        spectral_scores(np.zeros(4), np.zeros(4, int))


def test_registered_and_configured():
    assert SELECTORS["spectral"] is spectral_filter
    s = from_config(SelectSettings, {**base_config().select.to_dict(), "name": "spectral"}, "x")
    assert s.spectral == SpectralSettings(poison_rate=0.05)
    assert s.effective() == {"poison_rate": 0.05}


@pytest.mark.parametrize("value", [0.0, 0.7, float("inf")])
def test_settings_name_the_field(value):
    section = base_config().select.to_dict()
    section["name"] = "spectral"
    section["spectral"]["poison_rate"] = value
    pattern = "^" + re.escape("config.select.spectral.poison_rate: must be in (0, 2/3)")
    with pytest.raises(ConfigError, match=pattern):
        from_config(SelectSettings, section, "config.select")
