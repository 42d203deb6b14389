"""The shared checks and helpers of the attacks: validation, patch, pixels, patterns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.attacks import patch, patterns, pixels, validation


def test_is_int_and_is_real():
    assert validation.is_int(3) and validation.is_int(np.int64(3))
    assert not validation.is_int(True) and not validation.is_int(3.0)
    assert validation.is_real(0.5) and validation.is_real(np.float32(2)) and validation.is_real(1)
    assert not validation.is_real(True) and not validation.is_real(float("nan"))
    assert not validation.is_real(float("inf")) and not validation.is_real("1")


@pytest.mark.parametrize(
    "check, args, good, bad, message",
    [
        (validation.check_target, (), np.int32(2), -1, "x: target must be a non-negative int"),
        (validation.check_seed, (), 0, 1.0, "x: seed must be a non-negative int"),
        (validation.check_positive_int, ("n",), 1, 0, "x: n must be a positive int"),
        (validation.check_opacity, ("alpha",), 1, 0.0, r"x: alpha must be a number in \(0, 1\]"),
        (validation.check_probability, ("p",), 0, 1.0, r"x: p must be a probability in \[0, 1\)"),
    ],
)
def test_checks_name_the_attack_and_normalize(check, args, good, bad, message):
    value = check("x", *args, good)
    assert value == good and type(value) in (int, float)
    with pytest.raises(ValueError, match=message):
        check("x", *args, bad)


def test_check_inputs_converts_and_names_the_attack():
    images, labels = validation.check_inputs("x", np.zeros((2, 4, 4, 3), np.uint8), [0, 1])
    assert isinstance(images, jax.Array) and isinstance(labels, jax.Array)
    with pytest.raises(ValueError, match="x: images must be uint8"):
        validation.check_inputs("x", np.zeros((2, 4, 4, 3), np.float32), [0, 1])
    with pytest.raises(ValueError, match=r"x: images must have shape \[..., H, W, 3\]"):
        validation.check_inputs("x", np.zeros((2, 4, 4), np.uint8), [0, 1])
    with pytest.raises(ValueError, match="x: labels shape"):
        validation.check_inputs("x", np.zeros((2, 4, 4, 3), np.uint8), [0])


def test_patch_trigger_stamps_and_names_the_attack():
    stamp, params = patch.patch_trigger("x", size=2, color=(1, 2, 3), location="top_left")
    assert params == (("size", (2, 2)), ("color", (1, 2, 3)), ("location", "top_left"))
    out = np.asarray(stamp(jax.random.key(0), np.zeros((1, 4, 4, 3), np.uint8), np.zeros(1)))
    assert (out[0, :2, :2] == (1, 2, 3)).all() and (out[0, 2:] == 0).all()
    with pytest.raises(ValueError, match="x: size must be"):
        patch.patch_trigger("x", size=0, color=(1, 2, 3), location="top_left")
    with pytest.raises(ValueError, match="x: the 5×5 patch does not fit"):
        stamp, _ = patch.patch_trigger("x", size=5, color=(1, 2, 3), location="top_left")
        stamp(jax.random.key(0), np.zeros((1, 4, 4, 3), np.uint8), np.zeros(1))


def test_pixels_round_and_clip():
    x = jnp.array([[[[0, 100, 255]]]], jnp.uint8)
    assert pixels.to_uint8(jnp.array([-3.0, 2.5, 3.5, 300.0])).tolist() == [0, 2, 4, 255]
    assert pixels.blend(x, np.full((1, 1, 3), 255.0), 0.5).tolist() == [[[[128, 178, 255]]]]
    assert pixels.add_pattern(x, np.array([-10.0, 10.0, 10.0])).tolist() == [[[[0, 110, 255]]]]
    chosen = pixels.where_images(jnp.array([True, False]), jnp.ones((2, 1, 1, 3)), jnp.zeros(3))
    assert chosen[:, 0, 0, 0].tolist() == [1, 0]


def test_check_pattern():
    assert patterns.check_pattern("x", "kitty") == "kitty"
    with pytest.raises(ValueError, match="x: unknown pattern 'cat'"):
        patterns.check_pattern("x", "cat")
