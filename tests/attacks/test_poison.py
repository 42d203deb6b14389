"""poison_dataset and triggered_test_set: counts, bookkeeping, copies, keys, clean label."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.attacks import (
    Attack,
    PoisonedDataset,
    TriggeredTestSet,
    badnets,
    poison_dataset,
    triggered_test_set,
)
from jaxbd.data.dataset import Dataset

N, H, W, C = 200, 8, 8, 5
TARGET = 2
BATCH = 16  # several batches and a padded last one for most fractions below
KEY = jax.random.key(0)
# Module-level attacks, so each transform compiles once per shape across tests.
BADNETS = badnets(target=TARGET, size=3)
RANDOM_BADNETS = badnets(target=TARGET, size=3, location="random")


def _dataset(n=N, seed=0):
    rng = np.random.default_rng(seed)
    # Pixel values avoid 255 and 0 so every patch pixel changes (see _patch_changed).
    images = rng.integers(1, 255, size=(n, H, W, 3), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % C).astype(np.int32)
    return Dataset(images=images, labels=labels, num_classes=C, source="synthetic(test)")


DATA = _dataset()


def _keep_labels(key, images, labels):
    return BADNETS.train_fn(key, images, labels)[0], labels


def _all_to_all(key, images, labels):
    return BADNETS.train_fn(key, images, labels)[0], (labels + 1) % C


CLEAN_LABEL = Attack(
    name="c_badnets_test",
    target=TARGET,
    clean_label=True,
    train_fn=_keep_labels,
    test_fn=BADNETS.test_fn,
)
ALL_TO_ALL = Attack(name="all_to_all_test", target=0, train_fn=_all_to_all, test_fn=_all_to_all)


def _patch_changed(before, after):
    """Every image pair differs exactly on the 3×3 bottom-right patch."""
    changed = np.any(before != after, axis=-1)
    expected = np.zeros((H, W), bool)
    expected[-3:, -3:] = True
    np.testing.assert_array_equal(changed, np.broadcast_to(expected, changed.shape))


def _check_consistent(p: PoisonedDataset, data: Dataset, target: int):
    n = len(data)
    assert isinstance(p, PoisonedDataset)
    assert p.target == target
    assert p.is_poison.dtype == bool and p.is_poison.shape == (n,)
    assert p.poison_indices.dtype == np.int32
    assert p.original_labels.dtype == np.int32
    np.testing.assert_array_equal(p.poison_indices, np.flatnonzero(p.is_poison))
    assert np.all(np.diff(p.poison_indices) > 0)  # sorted, no duplicates
    np.testing.assert_array_equal(p.original_labels, data.labels)
    clean = ~p.is_poison
    # Unpoisoned examples are byte-identical and keep their labels.
    np.testing.assert_array_equal(p.dataset.images[clean], data.images[clean])
    np.testing.assert_array_equal(p.dataset.labels[clean], data.labels[clean])
    assert p.dataset.images.dtype == np.uint8 and p.dataset.images.shape == data.images.shape
    assert p.dataset.num_classes == data.num_classes


@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.1, 0.333, 1.0])
def test_poison_count_and_bookkeeping(fraction):
    p = poison_dataset(KEY, DATA, BADNETS, fraction=fraction, batch_size=BATCH)
    _check_consistent(p, DATA, TARGET)
    assert p.poison_indices.size == round(fraction * N)
    idx = p.poison_indices
    np.testing.assert_array_equal(p.dataset.labels[idx], np.full(idx.size, TARGET))
    _patch_changed(DATA.images[idx], p.dataset.images[idx])


def test_exclude_target():
    p = poison_dataset(KEY, DATA, BADNETS, fraction=0.25, exclude_target=True, batch_size=BATCH)
    _check_consistent(p, DATA, TARGET)
    n_candidates = int(np.sum(DATA.labels != TARGET))
    assert p.poison_indices.size == round(0.25 * n_candidates)
    assert np.all(DATA.labels[p.poison_indices] != TARGET)
    # Without the switch, target-class images are candidates too (the usual BadNets setting).
    p = poison_dataset(KEY, DATA, BADNETS, fraction=1.0, batch_size=BATCH)
    assert np.any(DATA.labels[p.poison_indices] == TARGET)
    assert "target class excluded" not in p.dataset.source


def test_input_is_not_mutated_and_outputs_are_copies():
    images, labels = DATA.images.copy(), DATA.labels.copy()
    p = poison_dataset(KEY, DATA, BADNETS, fraction=0.5, batch_size=BATCH)
    np.testing.assert_array_equal(DATA.images, images)
    np.testing.assert_array_equal(DATA.labels, labels)
    assert not np.shares_memory(p.dataset.images, DATA.images)
    assert not np.shares_memory(p.dataset.labels, DATA.labels)
    assert not np.shares_memory(p.original_labels, DATA.labels)


def test_deterministic_per_key_and_different_across_keys():
    a = poison_dataset(KEY, DATA, RANDOM_BADNETS, fraction=0.2, batch_size=BATCH)
    b = poison_dataset(KEY, DATA, RANDOM_BADNETS, fraction=0.2, batch_size=BATCH)
    c = poison_dataset(jax.random.key(1), DATA, RANDOM_BADNETS, fraction=0.2, batch_size=BATCH)
    np.testing.assert_array_equal(a.poison_indices, b.poison_indices)
    np.testing.assert_array_equal(a.dataset.images, b.dataset.images)
    assert not np.array_equal(a.poison_indices, c.poison_indices)


def test_random_location_poisons_each_get_one_square():
    p = poison_dataset(KEY, DATA, RANDOM_BADNETS, fraction=0.2, batch_size=BATCH)
    _check_consistent(p, DATA, TARGET)
    idx = p.poison_indices
    changed = np.any(DATA.images[idx] != p.dataset.images[idx], axis=-1)
    assert np.all(changed.sum(axis=(1, 2)) == 9)
    corners = set()
    for c in changed:
        rows, cols = np.nonzero(c)
        assert rows.max() - rows.min() == 2 and cols.max() - cols.min() == 2
        corners.add((rows.min(), cols.min()))
    assert len(corners) > 1


def test_batch_size_does_not_change_a_deterministic_attack():
    a = poison_dataset(KEY, DATA, BADNETS, fraction=0.3, batch_size=BATCH)
    b = poison_dataset(KEY, DATA, BADNETS, fraction=0.3)  # one batch of all poisons
    np.testing.assert_array_equal(a.dataset.images, b.dataset.images)
    np.testing.assert_array_equal(a.dataset.labels, b.dataset.labels)


def test_one_compilation_for_all_batches():
    calls = []

    def counted(key, images, labels):
        calls.append(images.shape)  # runs once per trace, not per call
        return BADNETS.train_fn(key, images, labels)

    attack = Attack(name="counted", target=TARGET, train_fn=counted, test_fn=counted)
    p = poison_dataset(KEY, DATA, attack, fraction=0.5, batch_size=BATCH)  # 7 batches
    assert p.poison_indices.size == 100
    # A second run (new key, same shapes) and the test set reuse the compiled transform.
    poison_dataset(jax.random.key(5), DATA, attack, fraction=0.3, batch_size=BATCH)
    triggered_test_set(KEY, DATA, attack, batch_size=BATCH)
    assert calls == [(BATCH, H, W, 3)]


def test_source_records_the_poisoning():
    p = poison_dataset(KEY, DATA, BADNETS, fraction=0.1, exclude_target=True, batch_size=BATCH)
    assert p.dataset.source.startswith("synthetic(test)")
    assert BADNETS.description in p.dataset.source
    assert "fraction=0.1" in p.dataset.source and "target class excluded" in p.dataset.source


def test_clean_label_poisons_target_images_and_keeps_labels():
    n_target = int(np.sum(DATA.labels == TARGET))  # 40
    fraction = 0.1  # of the whole set: 20 poisons
    p = poison_dataset(KEY, DATA, CLEAN_LABEL, fraction=fraction, batch_size=BATCH)
    _check_consistent(p, DATA, TARGET)
    assert p.poison_indices.size == round(fraction * N) <= n_target
    assert np.all(DATA.labels[p.poison_indices] == TARGET)
    np.testing.assert_array_equal(p.dataset.labels, DATA.labels)
    _patch_changed(DATA.images[p.poison_indices], p.dataset.images[p.poison_indices])
    # Exactly all target-class images is allowed; more is a clear error.
    p = poison_dataset(KEY, DATA, CLEAN_LABEL, fraction=n_target / N, batch_size=BATCH)
    np.testing.assert_array_equal(p.poison_indices, np.flatnonzero(DATA.labels == TARGET))
    with pytest.raises(ValueError, match="only 40 images"):
        poison_dataset(KEY, DATA, CLEAN_LABEL, fraction=0.25)
    with pytest.raises(ValueError, match="clean-label"):
        poison_dataset(KEY, DATA, CLEAN_LABEL, fraction=0.1, exclude_target=True)


@pytest.mark.parametrize("fraction", [-0.01, 1.01, float("nan"), "0.1", True])
def test_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        poison_dataset(KEY, DATA, BADNETS, fraction=fraction)


def test_target_outside_the_classes():
    with pytest.raises(ValueError, match=r"target 7 is outside \[0, 5\)"):
        poison_dataset(KEY, DATA, badnets(target=7, size=3), fraction=0.1)


def test_triggered_test_set_eligibility():
    test = _dataset(n=50, seed=1)
    t = triggered_test_set(KEY, test, BADNETS, batch_size=BATCH)
    assert isinstance(t, TriggeredTestSet)
    assert t.images.dtype == np.uint8 and t.images.shape == test.images.shape
    np.testing.assert_array_equal(t.labels, np.full(50, TARGET))
    np.testing.assert_array_equal(t.true_labels, test.labels)
    # Target-class images are not eligible for ASR.
    np.testing.assert_array_equal(t.eligible, test.labels != TARGET)
    _patch_changed(test.images, t.images)
    # All-to-all: every image has a different attack label, so every image is eligible.
    t = triggered_test_set(KEY, test, ALL_TO_ALL, batch_size=BATCH)
    np.testing.assert_array_equal(t.labels, (test.labels + 1) % C)
    assert t.eligible.all()


def test_triggered_test_set_uses_the_test_transform():
    def mark_train(key, images, labels):
        return jnp.zeros_like(images), labels

    attack = Attack(name="split", target=TARGET, train_fn=mark_train, test_fn=BADNETS.test_fn)
    t = triggered_test_set(KEY, DATA, attack, batch_size=BATCH)
    _patch_changed(DATA.images, t.images)
    p = poison_dataset(KEY, DATA, attack, fraction=0.1, batch_size=BATCH)
    assert np.all(p.dataset.images[p.poison_indices] == 0)


# --- which poisons are backdoor samples ---------------------------------------------------


def test_is_backdoor_dirty_label_flags_the_relabelled_poisons():
    # fraction 1.0: every example is a poison, the target class (40 images) included.
    p = poison_dataset(KEY, DATA, BADNETS, fraction=1.0, batch_size=BATCH)
    assert p.is_backdoor.dtype == bool and p.is_backdoor.shape == (N,)
    # Target-class picks are stamped but keep their label: poisons, not backdoor samples.
    np.testing.assert_array_equal(p.is_backdoor, DATA.labels != TARGET)
    assert p.is_poison.all()
    # All-to-all changes every poison's label: all are backdoor samples.
    p = poison_dataset(KEY, DATA, ALL_TO_ALL, fraction=0.3, batch_size=BATCH)
    np.testing.assert_array_equal(p.is_backdoor, p.is_poison)


def test_is_backdoor_excludes_wanet_noise_samples():
    from jaxbd.attacks import wanet

    attack = wanet(target=TARGET, noise_fraction=0.5)
    p = poison_dataset(KEY, DATA, attack, fraction=0.5, exclude_target=True, batch_size=BATCH)
    noise = p.is_poison & (p.dataset.labels == p.original_labels)
    assert 0 < noise.sum() < p.is_poison.sum()  # both kinds present
    np.testing.assert_array_equal(p.is_backdoor, p.is_poison & ~noise)
    assert np.all(p.dataset.labels[p.is_backdoor] == TARGET)


def test_is_backdoor_clean_label_flags_every_poison():
    p = poison_dataset(KEY, DATA, CLEAN_LABEL, fraction=0.1, batch_size=BATCH)
    np.testing.assert_array_equal(p.is_backdoor, p.is_poison)
    assert p.is_backdoor.sum() == 20


def test_poisoned_dataset_defaults_and_checks_is_backdoor():
    n = 4
    data = _dataset(n)
    flags = np.array([True, False, True, False])
    made = PoisonedDataset(
        dataset=data,
        is_poison=flags,
        original_labels=data.labels,
        poison_indices=np.flatnonzero(flags).astype(np.int32),
        target=0,
    )
    np.testing.assert_array_equal(made.is_backdoor, flags)  # default: every poison
    with pytest.raises(ValueError, match="not poisons"):
        dataclasses.replace(made, is_backdoor=np.array([False, True, False, False]))
    with pytest.raises(ValueError, match="is_backdoor must be bool"):
        dataclasses.replace(made, is_backdoor=np.zeros(3, bool))
