"""Parameter-Controlled Backdoor: the parameter subset, the Attack interface, the poison
pool, and what it hands the engine."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.attacks import badnets, pcb_training, poison_dataset, triggered_test_set
from jaxbd.attacks.pcb import ParameterControlledBackdoor, pcb, random_update_mask
from jaxbd.data import make_synthetic
from jaxbd.models import resnet18, tiny_cnn
from jaxbd.train import CosineSchedule, EpochStats, Trainer, make_mesh

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def resnet_params():
    # Shapes only: pcb needs the structure, not values, so nothing is compiled or run.
    model = resnet18(num_classes=10, width=4)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    )
    return variables["params"]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_leaf_scope_selects_exactly_round_p_size_per_leaf(resnet_params, fraction):
    attack = pcb(resnet_params, key=jax.random.key(0), param_fraction=fraction)
    assert jax.tree.structure(attack.update_mask) == jax.tree.structure(resnet_params)
    for mask, shape in zip(
        _leaves(attack.update_mask), jax.tree.leaves(resnet_params), strict=True
    ):
        assert mask.shape == shape.shape and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert mask.sum() == round(fraction * mask.size)
    expected = sum(round(fraction * p.size) for p in jax.tree.leaves(resnet_params))
    assert attack.num_selected == expected


def test_global_scope_selects_exactly_round_p_total(resnet_params):
    attack = pcb(resnet_params, key=jax.random.key(0), param_fraction=0.05, scope="global")
    total = sum(p.size for p in jax.tree.leaves(resnet_params))
    assert attack.num_selected == round(0.05 * total)
    # Spread over the whole model, not concentrated in one leaf.
    leaves = [m for m in _leaves(attack.update_mask) if m.size > 1000]
    assert all(0.03 < m.mean() < 0.07 for m in leaves)


def test_mask_is_a_function_of_the_key(resnet_params):
    a, b, c = (
        random_update_mask(jax.random.key(k), resnet_params, 0.1)
        for k in (1, 1, 2)
    )  # fmt: skip
    for x, y, z in zip(_leaves(a), _leaves(b), _leaves(c), strict=True):
        np.testing.assert_array_equal(x, y)
        if x.size > 100:
            assert np.any(x != z)


def test_attack_interface_delegates_to_the_trigger(resnet_params):
    trigger = badnets(target=3, size=2, location="top_left")
    attack = pcb(resnet_params, key=jax.random.key(0), target=3, trigger=trigger)
    assert isinstance(attack, ParameterControlledBackdoor)
    assert attack.name == "pcb" and attack.target == 3 and not attack.clean_label
    assert attack.test_fn is trigger.test_fn and attack.train_fn is trigger.train_fn
    assert attack.description.startswith("pcb(target=3, param_fraction=0.1")
    assert trigger.description in attack.description
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(5, dtype=np.int32)
    for got, want in zip(
        attack.apply_test(jax.random.key(1), images, labels),
        trigger.apply_test(jax.random.key(1), images, labels),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
    # The test set is triggered exactly as by the trigger alone, so ASR is unchanged.
    test = make_synthetic(num_train=10, num_test=20, image_size=8, seed=1).test
    got = triggered_test_set(jax.random.key(2), test, attack)
    want = triggered_test_set(jax.random.key(2), test, trigger)
    np.testing.assert_array_equal(got.images, want.images)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.eligible, want.eligible)


def test_default_trigger_is_badnets_with_the_target(resnet_params):
    attack = pcb(resnet_params, key=jax.random.key(0), target=2)
    assert attack.trigger.name == "badnets" and attack.trigger.target == 2
    assert dict(attack.params)["poison_every"] == 2
    assert attack.poison_batch_size(128) == 12  # int(0.1 · 128), as the reference code
    assert attack.poison_batch_size(8) == 1  # never zero


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(trigger=badnets(target=1)), "targets class 1"),
        (dict(param_fraction=0.0), "param_fraction"),
        (dict(param_fraction=1.5), "param_fraction"),
        (dict(param_fraction=True), "param_fraction"),
        (dict(scope="layer"), "scope"),
        (dict(poison_every=0), "poison_every"),
        (dict(poison_batch_ratio=0.0), "poison_batch_ratio"),
        (dict(update_mask_mode="soft"), "update_mask_mode"),
        (dict(trigger_stage="during"), "trigger_stage"),
    ],
)
def test_bad_arguments_are_clear_errors(resnet_params, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pcb(resnet_params, key=jax.random.key(0), **kwargs)


@pytest.mark.parametrize("stage", ["after_augment", "before_augment"])
def test_poison_source_copies_the_poisoning_draw(resnet_params, stage):
    train = make_synthetic(num_train=40, num_test=8, image_size=8, seed=2).train
    attack = pcb(resnet_params, key=jax.random.key(0), target=4, trigger_stage=stage)
    key = jax.random.key(3)
    pool = attack.poison_source(key, train, fraction=0.5, exclude_target=True)
    assert len(pool) == round(0.5 * np.sum(train.labels != 4))
    assert pool.num_classes == train.num_classes
    # The same draw as poisoning the set with the trigger: copies of those images, in order.
    chosen = poison_dataset(
        key, train, attack.trigger, fraction=0.5, exclude_target=True
    ).poison_indices
    assert np.all(train.labels[chosen] != 4)
    if stage == "before_augment":  # triggered and relabelled up front
        stamped, _ = attack.trigger(key, train.images[chosen], train.labels[chosen])
        np.testing.assert_array_equal(pool.images, np.asarray(stamped))
        assert np.all(pool.labels == 4)
    else:  # clean copies: the engine triggers them after augmentation
        np.testing.assert_array_equal(pool.images, train.images[chosen])
        np.testing.assert_array_equal(pool.labels, train.labels[chosen])
    with pytest.raises(ValueError, match="empty poison pool"):
        attack.poison_source(key, train, fraction=0.0)


def test_train_epoch_runs_the_engine_with_the_attack_schedule(resnet_params, monkeypatch):
    # The loop itself (order, masking, compiled-function reuse) is tested in
    # tests/attacks/test_pcb_training.py; here only what the attack passes to it.
    attack = pcb(
        resnet_params,
        key=jax.random.key(0),
        poison_every=3,
        poison_batch_ratio=0.25,
        update_mask_mode="gradient",
    )
    calls = []

    def recording_epoch(*args, **kwargs):
        calls.append((args, kwargs))
        return "state", "stats"

    monkeypatch.setattr(pcb_training, "train_epoch_alternating", recording_epoch)

    class RecordingTrainer:
        batch_size = 64

    trainer = RecordingTrainer()
    key, subset = jax.random.key(5), jnp.arange(4)
    result = attack.train_epoch(trainer, "s", "clean", "pool", key, indices=subset)
    assert result == ("state", "stats")
    (args, kwargs), = calls  # fmt: skip
    assert args == (trainer, "s", "clean", "pool", key)
    assert kwargs["update_mask"] is attack.update_mask and kwargs["indices"] is subset
    assert kwargs["poison_every"] == 3 and kwargs["poison_batch_size"] == 16
    assert kwargs["update_mask_mode"] == "gradient"
    # The default trigger stage hands the engine the trigger to stamp after augmentation.
    assert kwargs["poison_transform"] is attack.trigger.train_fn
    before = pcb(resnet_params, key=jax.random.key(0), trigger_stage="before_augment")
    before.train_epoch(trainer, "s", "clean", "pool", key)
    assert calls[-1][1]["poison_transform"] is None
    replicated = {"already": "placed"}
    attack.train_epoch(trainer, "s", "clean", "pool", key, update_mask=replicated)
    assert calls[-1][1]["update_mask"] is replicated


def test_make_epoch_fn_trains_alternating_epochs_from_its_pool():
    # The training hook on the tiny network: an EpochFn whose pool is put on the devices
    # once and whose stats carry the poisoned steps' figures under EpochStats's names.
    train = make_synthetic(num_train=64, num_test=8, image_size=8, seed=4).train
    model = tiny_cnn(width=4)
    trainer = Trainer(
        model, make_mesh(1), batch_size=16, eval_batch_size=16, mean=MEAN, std=STD,
        progress=False,
    )  # fmt: skip
    schedule = CosineSchedule.create(0.05, 100)
    state = trainer.init_state(jax.random.key(0), (8, 8, 3), schedule, rng=jax.random.key(1))
    attack = pcb(state.params, key=jax.random.key(2), target=1, poison_batch_ratio=0.25)
    pool_key = jax.random.key(3)
    epoch_fn = attack.make_epoch_fn(trainer, train, key=pool_key, fraction=0.5, exclude_target=True)
    expected = attack.poison_source(pool_key, train, fraction=0.5, exclude_target=True)
    assert len(epoch_fn.pool) == len(expected) == round(0.5 * np.sum(train.labels != 1))
    np.testing.assert_array_equal(jax.device_get(epoch_fn.pool.images), expected.images)
    data = trainer.put(train.images, train.labels)
    for epoch in range(2):
        state, stats, presentations = epoch_fn(state, data, jax.random.key(10 + epoch))
        assert isinstance(stats, EpochStats) and presentations is None
        assert stats.extra["poison_steps"] > 0
        assert stats.steps == 4 and stats.extra["poison_steps"] == 2  # P C P C
        assert np.isfinite(stats.loss) and np.isfinite(stats.extra["poison_loss"])
        assert 0.0 <= stats.accuracy <= 1.0 and 0.0 <= stats.extra["poison_accuracy"] <= 1.0
    assert int(state.step) == 8
    # A coreset restricts the clean examples, as for Trainer.train_epoch.
    subset = jnp.arange(0, 64, 2, dtype=jnp.int32)
    state, stats, _ = epoch_fn(state, data, jax.random.key(12), indices=subset, desc="coreset")
    assert stats.steps == 2 and stats.extra["poison_steps"] == 1
