"""BadNets: exact pixel sets for every location, jit/vmap, determinism, errors, registry."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxbd import attacks
from jaxbd.attacks import ATTACKS, Attack, badnets, make_attack

RED = np.array([255, 0, 0], np.uint8)


def _images(shape, seed=0):
    # Values in [1, 254]: no pixel equals the patch colour, so every patch pixel visibly
    # changes and "changed pixels" is exactly "patch pixels".
    return np.random.default_rng(seed).integers(1, 255, size=shape, dtype=np.uint8)


def _changed(before, after):
    """bool[..., H, W]: pixels where any channel differs."""
    return np.any(np.asarray(before) != np.asarray(after), axis=-1)


def _square(shape_hw, row, col, h, w):
    mask = np.zeros(shape_hw, bool)
    mask[row : row + h, col : col + w] = True
    return mask


def _assert_one_square(changed, h, w):
    """`changed` (bool[H, W]) is exactly one filled h×w rectangle; returns its corner."""
    rows, cols = np.nonzero(changed)
    assert rows.size == h * w, f"{rows.size} changed pixels, expected {h * w}"
    row, col = rows.min(), cols.min()
    assert rows.max() - row + 1 == h and cols.max() - col + 1 == w
    np.testing.assert_array_equal(changed, _square(changed.shape, row, col, h, w))
    return int(row), int(col)


# One attack and one jitted transform per location, compiled once for the fixed test shapes.
LOCATION_CASES = {
    "bottom_right": (25, 25),
    "bottom_left": (25, 0),
    "top_left": (0, 0),
    "top_right": (0, 25),
    "center": (12, 12),
    (3, 17): (3, 17),
}
JITTED = {loc: jax.jit(badnets(target=4, location=loc)) for loc in LOCATION_CASES}
RANDOM = badnets(target=1, size=(3, 5), color=(10, 200, 30), location="random")
RANDOM_JIT = jax.jit(RANDOM)
KEY = jax.random.key(0)


@pytest.mark.parametrize("location", list(LOCATION_CASES), ids=str)
def test_only_the_patch_pixels_change(location):
    images = _images((4, 32, 32, 3))
    labels = np.array([0, 1, 4, 9], np.int32)
    out, out_labels = JITTED[location](KEY, images, labels)
    assert out.dtype == jnp.uint8 and out.shape == images.shape
    assert out_labels.dtype == jnp.int32
    np.testing.assert_array_equal(out_labels, [4, 4, 4, 4])
    row, col = LOCATION_CASES[location]
    expected = _square((32, 32), row, col, 7, 7)
    out = np.asarray(out)
    for before, after in zip(images, out, strict=True):
        np.testing.assert_array_equal(_changed(before, after), expected)
        np.testing.assert_array_equal(after[expected], np.broadcast_to(RED, (49, 3)))


def test_default_is_the_reference_trigger():
    # The usual BadNets trigger: 7×7 red square on rows/cols 25–31 of a 32×32 image, target 0.
    attack = badnets()
    assert (attack.name, attack.target, attack.clean_label) == ("badnets", 0, False)
    images = _images((2, 32, 32, 3))
    out, out_labels = attack(KEY, images, np.array([3, 0], np.int32))
    rows, cols = np.nonzero(_changed(images[0], out[0]))
    assert set(rows) == set(range(25, 32)) and set(cols) == set(range(25, 32))
    np.testing.assert_array_equal(np.asarray(out)[:, 25:, 25:], np.broadcast_to(RED, (2, 7, 7, 3)))
    np.testing.assert_array_equal(out_labels, [0, 0])


def test_train_and_test_transforms():
    attack = badnets(target=2)
    images, labels = _images((3, 32, 32, 3)), np.zeros((3,), np.int32)
    a, la = attack(KEY, images, labels)
    b, lb = attack.apply_test(KEY, images, labels)
    c, lc = attack.train_fn(KEY, images, labels)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(la, lc)


def test_random_location_is_one_square_per_image_inside_the_image():
    images = _images((16, 32, 32, 3))
    out, out_labels = RANDOM_JIT(KEY, images, np.zeros((16,), np.int32))
    out = np.asarray(out)
    corners = set()
    for before, after in zip(images, out, strict=True):
        changed = _changed(before, after)
        corners.add(_assert_one_square(changed, 3, 5))
        np.testing.assert_array_equal(after[changed], np.full((15, 3), (10, 200, 30)))
    assert len(corners) > 1  # positions are per image, not one per batch
    np.testing.assert_array_equal(out_labels, np.ones(16))


def test_random_location_covers_every_position_including_the_edges():
    # 3×3 patch in an 8×8 image: corners (r, c) with r, c in 0..5. 512 draws miss one of the
    # 36 with probability < 36·(35/36)^512 ≈ 2e-5, and the key is fixed anyway.
    attack = jax.jit(badnets(size=3, location="random"))
    images = _images((512, 8, 8, 3))
    out, _ = attack(jax.random.key(3), images, np.zeros((512,), np.int32))
    changed = _changed(images, out)
    corners = {_assert_one_square(c, 3, 3) for c in changed}
    assert corners == {(r, c) for r in range(6) for c in range(6)}


def test_random_location_is_deterministic_per_key():
    images = _images((16, 32, 32, 3))
    labels = np.zeros((16,), np.int32)
    a, _ = RANDOM_JIT(KEY, images, labels)
    b, _ = RANDOM_JIT(KEY, images, labels)
    c, _ = RANDOM_JIT(jax.random.key(1), images, labels)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_vmap_over_single_images():
    images = _images((5, 32, 32, 3))
    labels = np.arange(5, dtype=np.int32)
    keys = jax.random.split(KEY, 5)
    # Fixed location: vmapping over single images equals the batched call.
    fixed = badnets(target=3, location="top_right")
    batched, batched_labels = fixed(KEY, images, labels)
    mapped, mapped_labels = jax.jit(jax.vmap(fixed))(keys, images, labels)
    np.testing.assert_array_equal(mapped, batched)
    np.testing.assert_array_equal(mapped_labels, batched_labels)
    # Random location: each image (an unbatched [H, W, 3] inside vmap) gets its own square.
    mapped, mapped_labels = jax.vmap(RANDOM)(keys, images, labels)
    for before, after in zip(images, np.asarray(mapped), strict=True):
        _assert_one_square(_changed(before, after), 3, 5)
    np.testing.assert_array_equal(mapped_labels, np.ones(5))


def test_unbatched_image_and_extra_batch_dims():
    attack = badnets(target=6, location="top_left")
    image = _images((32, 32, 3))
    out, label = attack(KEY, image, np.int32(2))
    assert out.shape == (32, 32, 3) and label.shape == () and int(label) == 6
    np.testing.assert_array_equal(_changed(image, out), _square((32, 32), 0, 0, 7, 7))
    grid = _images((2, 3, 32, 32, 3))
    out, labels = attack(KEY, grid, np.zeros((2, 3), np.int32))
    assert out.shape == grid.shape and labels.shape == (2, 3)
    np.testing.assert_array_equal(np.asarray(out)[1, 2], np.asarray(attack(KEY, grid[1, 2], 0)[0]))


@pytest.mark.parametrize(
    ("shape", "size", "location", "corner"),
    [
        ((28, 20), 7, "bottom_right", (21, 13)),
        ((28, 20), (4, 6), "center", (12, 7)),
        ((64, 64), 9, "bottom_left", (55, 0)),
        ((7, 7), 7, "center", (0, 0)),  # patch exactly the image size
        ((16, 24), (2, 3), (14, 21), (14, 21)),  # explicit corner at the last valid place
    ],
)
def test_other_image_sizes(shape, size, location, corner):
    h, w = (size, size) if isinstance(size, int) else size
    images = _images((2, *shape, 3))
    out, _ = badnets(size=size, location=location)(KEY, images, np.zeros((2,), np.int32))
    for before, after in zip(images, np.asarray(out), strict=True):
        np.testing.assert_array_equal(_changed(before, after), _square(shape, *corner, h, w))


def test_random_location_on_non_square_images():
    images = _images((8, 12, 40, 3))
    out, _ = badnets(size=(12, 4), location="random")(KEY, images, np.zeros((8,), np.int32))
    for before, after in zip(images, np.asarray(out), strict=True):
        row, _ = _assert_one_square(_changed(before, after), 12, 4)
        assert row == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"color": (255, 0)}, "three ints"),
        ({"color": (255, 0, 256)}, "three ints"),
        ({"color": (-1, 0, 0)}, "three ints"),
        ({"color": (0.5, 0, 0)}, "three ints"),
        ({"location": "bottom-right"}, "valid options"),
        ({"location": (1, 2, 3)}, "bottom_right"),
        ({"location": (-1, 0)}, "non-negative"),
        ({"size": 0}, "size"),
        ({"size": (3, 4, 5)}, "size"),
        ({"target": -1}, "target"),
    ],
)
def test_bad_hyperparameters_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        badnets(**kwargs)


def test_bad_location_lists_the_options():
    with pytest.raises(ValueError) as info:
        badnets(location="middle")
    for option in ("bottom_right", "bottom_left", "top_left", "top_right", "center", "random"):
        assert option in str(info.value)


@pytest.mark.parametrize(
    "attack",
    [badnets(size=9), badnets(size=(3, 9), location="random"), badnets(size=3, location=(6, 0))],
)
def test_patch_that_does_not_fit_fails_at_trace_time(attack):
    images = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.uint8)
    labels = jax.ShapeDtypeStruct((2,), jnp.int32)
    with pytest.raises(ValueError, match=r"does not fit|leaves"):
        jax.eval_shape(attack, KEY, images, labels)


def test_bad_inputs_are_clear_errors():
    attack = badnets()
    with pytest.raises(ValueError, match="uint8"):
        attack(KEY, np.zeros((1, 32, 32, 3), np.float32), np.zeros((1,), np.int32))
    with pytest.raises(ValueError, match="labels shape"):
        attack(KEY, np.zeros((2, 32, 32, 3), np.uint8), np.zeros((3,), np.int32))


def test_attack_is_hashable_and_described():
    attack = badnets(target=3, size=(2, 4), color=[1, 2, 3], location=[0, 5])
    assert isinstance(attack, Attack)
    hash(attack)  # usable as a static jit argument
    assert attack.description == (
        "badnets(target=3, size=(2, 4), color=(1, 2, 3), location=(0, 5))"
    )


def test_registry_and_make_attack():
    assert ATTACKS["badnets"] is badnets
    assert attacks.make_attack is make_attack
    config = ml_collections.ConfigDict(
        {
            "name": "badnets",
            "target": 2,
            "fraction": 0.1,  # belongs to poison_dataset; ignored here
            "badnets": {"size": [3, 4], "color": [0, 255, 0], "location": [1, 2]},
        }
    )
    attack = make_attack(config)
    assert attack.target == 2
    assert dict(attack.params) == {"size": (3, 4), "color": (0, 255, 0), "location": (1, 2)}
    # A missing sub-dict takes the factory defaults.
    default = make_attack(ml_collections.ConfigDict({"name": "badnets", "target": 0}))
    assert dict(default.params) == dict(badnets().params)
    with pytest.raises(ValueError, match="badnets"):
        make_attack(ml_collections.ConfigDict({"name": "nope", "target": 0}))
