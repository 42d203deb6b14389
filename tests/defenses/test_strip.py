"""STRIP's pure pieces: entropy in bits, superimposition, scores against a plain NumPy loop
over inputs × overlays, and the FRR threshold's quantile convention."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.defenses import strip
from jaxbd.settings import ConfigError, from_config

H, W, C = 4, 4, 5


@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_entropy_of_uniform_logits_is_log2_of_the_classes(num_classes):
    logits = jnp.full((3, 2, num_classes), 7.5)
    out = strip.entropy_bits(logits)
    assert out.shape == (3, 2) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, math.log2(num_classes), rtol=1e-6)


def test_entropy_of_one_hot_like_logits_is_about_zero():
    logits = jnp.zeros((4, 10)).at[jnp.arange(4), jnp.array([0, 3, 9, 5])].set(60.0)
    np.testing.assert_allclose(strip.entropy_bits(logits), 0.0, atol=1e-6)
    # A class with probability exactly 0 contributes 0 bits, not NaN.
    with_inf = jnp.array([[0.0, 0.0, -jnp.inf]])
    np.testing.assert_allclose(strip.entropy_bits(with_inf), 1.0, rtol=1e-6)
    # Two equally likely classes out of four: one bit.
    np.testing.assert_allclose(strip.entropy_bits(jnp.array([3.0, 3.0, -80.0, -80.0])), 1.0)


def test_superimpose_saturates_or_rounds_halves_to_even():
    x = np.array([200, 0, 1, 3, 255], np.uint8)
    o = np.array([100, 1, 2, 2, 255], np.uint8)
    np.testing.assert_array_equal(strip.superimpose(x, o, "sum"), [255, 1, 3, 5, 255])
    # (0 + 1) / 2 = 0.5 -> 0 and (1 + 2) / 2 = 1.5 -> 2: halves to even, like np.round.
    np.testing.assert_array_equal(strip.superimpose(x, o, "half"), [150, 0, 2, 2, 255])
    with pytest.raises(ValueError, match="blend"):
        strip.superimpose(x, o, "max")


WEIGHTS = np.random.default_rng(0).normal(size=(H * W * 3, C)).astype(np.float32)


def stub_logits(images):
    """A tiny non-linear 'model': saturation and rounding of the blend change its output."""
    x = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0
    return jnp.tanh(x - 0.5) @ jnp.asarray(WEIGHTS) * 3.0


def numpy_strip(images, overlays, blend):
    """The definition, one input and one overlay at a time."""
    out = []
    for x in images.astype(np.int64):
        entropies = []
        for o in overlays.astype(np.int64):
            mixed = np.clip(x + o, 0, 255) if blend == "sum" else np.round(0.5 * x + 0.5 * o)
            flat = mixed.reshape(-1) / 255.0
            logits = np.tanh(flat - 0.5) @ WEIGHTS.astype(np.float64) * 3.0
            p = np.exp(logits - logits.max())
            p /= p.sum()
            entropies.append(-np.sum(p * np.log2(p)))
        out.append(np.mean(entropies))
    return np.asarray(out)


@pytest.mark.parametrize("blend", ["sum", "half"])
@pytest.mark.parametrize("batch_size", [1, 6, 8, 100])  # blocks of 1, 2, 2, 33 inputs
def test_strip_scores_match_a_loop_over_inputs_and_overlays(blend, batch_size):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, H, W, 3), np.uint8)  # 7: not a multiple of any block
    overlays = rng.integers(0, 256, (3, H, W, 3), np.uint8)
    scores = strip.strip_scores(stub_logits, images, overlays, blend=blend, batch_size=batch_size)
    assert scores.shape == (7,) and scores.dtype == jnp.float32
    np.testing.assert_allclose(scores, numpy_strip(images, overlays, blend), rtol=1e-5)


def test_a_partial_logits_fn_traces_its_variables():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (5, H, W, 3), np.uint8)
    overlays = rng.integers(0, 256, (4, H, W, 3), np.uint8)

    def logits(weights, images):
        x = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0
        return jnp.tanh(x - 0.5) @ weights * 3.0

    fn = jax.tree_util.Partial(logits, jnp.asarray(WEIGHTS))
    np.testing.assert_allclose(
        strip.strip_scores(fn, images, overlays, batch_size=8),
        numpy_strip(images, overlays, "sum"),
        rtol=1e-5,
    )
    # Other variables, same function: new results (the variables are inputs, not constants).
    other = jax.tree_util.Partial(logits, jnp.zeros_like(WEIGHTS))
    np.testing.assert_allclose(strip.strip_scores(other, images, overlays), math.log2(C), 1e-5)


def test_strip_scores_refuses_bad_input():
    images = np.zeros((2, H, W, 3), np.uint8)
    with pytest.raises(ValueError, match="at least one overlay"):
        strip.strip_scores(stub_logits, images, images[:0])
    with pytest.raises(ValueError, match="uint8"):
        strip.strip_scores(stub_logits, images.astype(np.float32), images)
    with pytest.raises(ValueError, match="differ in shape"):
        strip.strip_scores(stub_logits, images, np.zeros((2, H + 1, W, 3), np.uint8))
    with pytest.raises(ValueError, match="blend"):
        strip.strip_scores(stub_logits, images, images, blend="max")
    with pytest.raises(ValueError, match="batch_size"):
        strip.strip_scores(stub_logits, images, images, batch_size=0)
    assert strip.strip_scores(stub_logits, images[:0], images).shape == (0,)


def test_frr_threshold_is_the_documented_quantile():
    scores = np.random.default_rng(3).permutation(np.arange(500, dtype=np.float32))
    # K = 500, frr = 1%: the 6th smallest score; exactly 5 clean scores fall below it.
    assert strip.frr_threshold(scores, 0.01) == 5.0
    assert strip.flag_triggered(scores, 5.0).sum() == 5
    # K = 50: floor(0.5) = 0 -> the smallest score; no clean score is rejected.
    assert strip.frr_threshold(scores[:50], 0.01) == scores[:50].min()
    for k in (1, 7, 50, 100, 333):
        sample = np.random.default_rng(k).normal(size=k)
        for frr in (0.01, 0.05, 0.1, 0.29, 0.5, 0.99):
            t = strip.frr_threshold(sample, frr)
            below = int(np.sum(sample < t))
            assert t in sample
            assert below == min(math.floor(frr * k + 1e-9), k - 1), (k, frr)
            assert below / k <= frr  # the held-out FRR never exceeds the target
            # ... and t is the largest score with that property: the next one rejects more.
            if below + 1 < k:
                assert (below + 1) / k > frr


def test_frr_threshold_refuses_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        strip.frr_threshold(np.zeros(0), 0.01)
    with pytest.raises(ValueError, match="finite"):
        strip.frr_threshold(np.array([1.0, np.nan]), 0.01)
    for frr in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="frr"):
            strip.frr_threshold(np.ones(3), frr)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"overlays": 0}, "overlays: must be >= 1"),
        ({"overlays": 2.5}, "overlays"),
        ({"frr": 0.0}, r"frr: must be in \(0, 1\)"),
        ({"frr": 1.0}, "frr"),
        ({"frr": float("nan")}, "frr"),
        ({"blend": "max"}, "blend: must be one of"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_settings_are_validated(section, message):
    with pytest.raises(ConfigError, match=message):
        from_config(strip.StripSettings, section, "config.detector.strip")
    defaults = strip.StripSettings()
    assert (defaults.overlays, defaults.blend, defaults.frr, defaults.batch_size) == (
        100,
        "sum",
        0.01,
        256,
    )
