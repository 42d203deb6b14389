"""The Parameter-Controlled Backdoor's training loop (`jaxbd.attacks.pcb_training`): clean
steps alternating with update-masked poisoned steps, built from the engine's compiled steps.

A tiny CNN on 8×8 images keeps every compile under a second; the trainer and its compiled
functions are built once per module and reused.
"""

import functools
import itertools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.attacks import badnets, pcb_training
from jaxbd.attacks.pcb import pcb
from jaxbd.data import make_synthetic
from jaxbd.runs import RunDir, train_phase
from jaxbd.train import (
    PLAIN,
    CosineSchedule,
    EpochProgress,
    Trainer,
    init_variables,
    make_mesh,
    preemption,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
LR = 0.1
B = 8


class TinyNet(nn.Module):
    """Conv + BatchNorm + pooled dense head; returns (logits, features) like jaxbd models."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        features = jnp.mean(nn.relu(x), axis=(1, 2))
        return nn.Dense(self.num_classes)(features), features


MODEL = TinyNet()


@functools.cache
def _variables():
    return init_variables(MODEL, jax.random.key(0), (8, 8, 3))


def _random_mask(seed, fraction):
    params = _variables()[0]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < fraction, jnp.float32), params)


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _trainer(steps_per_call=1, num_devices=1):
    return Trainer(
        MODEL,
        make_mesh(num_devices),
        batch_size=B,
        eval_batch_size=B,
        mean=MEAN,
        std=STD,
        steps_per_call=steps_per_call,
        progress=False,
    )


@pytest.fixture(scope="module")
def setup():
    splits = make_synthetic(num_train=48, num_test=8, image_size=8, seed=0)
    trainer = _trainer()
    clean = trainer.put(splits.train.images, splits.train.labels)
    # A PCB attack on the tiny net: 2 of every 8 examples of a poisoned batch triggered.
    attack = pcb(
        _variables()[0],
        key=jax.random.key(3),
        param_fraction=0.3,
        trigger=badnets(size=2),
        poison_batch_ratio=0.25,
        trigger_stage="before_augment",  # a pool of triggered copies, used as it is
        update_mask_mode="freeze",  # the mode the spy below wraps
    )
    pool_set = attack.poison_source(jax.random.key(4), splits.train, fraction=0.2)
    assert len(pool_set) == 10 and np.all(pool_set.labels == 0)
    pool = trainer.put(pool_set.images, pool_set.labels)
    return trainer, clean, pool, attack


def _fresh(trainer, mask=None):
    params, batch_stats = jax.tree.map(jnp.copy, _variables())
    schedule = CosineSchedule.create(LR, 1000)
    return trainer.new_state(params, batch_stats, schedule, rng=jax.random.key(1), mask=mask)


def test_alternating_schedule():
    np.testing.assert_array_equal(pcb_training.alternating_schedule(5, 2), [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(pcb_training.alternating_schedule(6, 3), [1, 0, 0, 1, 0, 0])
    assert pcb_training.alternating_schedule(4, 1).all()
    with pytest.raises(ValueError, match="poison_every"):
        pcb_training.alternating_schedule(4, 0)


def test_poisoned_step_variant_is_one_object_per_arguments():
    # The same arguments give the same variant, hence the same compiled function.
    a = pcb_training.poisoned_step_variant("freeze", None, 3)
    assert a is pcb_training.poisoned_step_variant("freeze", None, 3)
    assert a != pcb_training.poisoned_step_variant("freeze", None, 2)
    assert a != pcb_training.poisoned_step_variant("gradient", None, 3)
    assert a.update_mask_mode == "freeze" and a.after_augment is None


def _spy(trainer, record, k):
    """Wraps the trainer's compiled clean and poisoned (mode "freeze", no poison transform, k
    poison rows) steps to log every call, and checks that each poisoned step leaves the
    parameters outside the update mask unchanged. Returns the entries to restore."""
    poisoned = pcb_training.poisoned_step_variant("freeze", None, k)
    clean_key, poison_key = (PLAIN, "none"), (poisoned, "none")
    clean_fn, poison_fn = trainer.compiled_steps(PLAIN), trainer.compiled_steps(poisoned)

    def clean(state, data, rows, update_mask=None, extra=None):
        assert update_mask is None and extra is None  # clean steps update everything
        record.append(("clean", np.asarray(rows)))
        return clean_fn(state, data, rows, update_mask, extra)

    def poison(state, data, rows, update_mask=None, extra=None):
        before = _host(state.params)  # read before the state is donated
        state, out = poison_fn(state, data, rows, update_mask, extra)
        trees = (before, _host(state.params), _host(update_mask))
        for p0, p1, u in zip(*map(jax.tree.leaves, trees), strict=True):
            np.testing.assert_array_equal(p1[u == 0], p0[u == 0])
        fill, idx = rows
        record.append(("poison", np.asarray(fill), np.asarray(idx)))
        return state, out

    trainer._compiled[clean_key], trainer._compiled[poison_key] = clean, poison
    return {clean_key: clean_fn, poison_key: poison_fn}


def test_alternating_epoch_order_counts_and_batches(setup):
    trainer, clean, pool, _ = setup
    update = _random_mask(9, 0.2)
    subset = jnp.arange(0, 48, 2, dtype=jnp.int32)  # 24 examples: 3 steps
    record = []
    originals = _spy(trainer, record, k=3)
    try:
        state, stats = pcb_training.train_epoch_alternating(
            trainer, _fresh(trainer), clean, pool, jax.random.key(0), update_mask=update,
            poison_every=2, poison_batch_size=3,
        )  # fmt: skip
        state, stats = pcb_training.train_epoch_alternating(
            trainer, state, clean, pool, jax.random.key(1), update_mask=update,
            poison_every=3, poison_batch_size=3, indices=subset,
        )  # fmt: skip
    finally:
        trainer._compiled.update(originals)
    kinds = [r[0] for r in record]
    # Epoch 1: 48 examples, 6 steps, P C P C P C; epoch 2: 3 steps, P C C.
    assert kinds == ["poison", "clean"] * 3 + ["poison", "clean", "clean"]
    assert int(state.step) == 9
    assert (stats.clean_steps, stats.poison_steps) == (2, 1)
    assert np.isfinite(stats.clean_loss) and np.isfinite(stats.poison_loss)
    assert 0.0 <= stats.poison_accuracy <= 1.0
    for epoch, calls, allowed in ((0, record[:6], range(48)), (1, record[6:], range(0, 48, 2))):
        seen = []
        for call in calls:
            if call[0] == "clean":
                assert call[1].shape == (1, B)
                seen += list(call[1].ravel())
            else:
                _, fill, idx = call
                assert fill.shape == (1, B - 3) and idx.shape == (1, 3)
                assert set(idx.ravel()) <= set(range(10))
                seen += list(fill.ravel())
        # Every clean example of the epoch at most once, only from the allowed set.
        assert len(seen) == len(set(seen)) and set(seen) <= set(allowed), epoch
    # Epoch 1 draws 3 × 3 = 9 poison examples from a pool of 10: all distinct.
    first = np.concatenate([c[2].ravel() for c in record[:6] if c[0] == "poison"])
    assert len(set(first)) == 9


def test_alternating_epochs_reuse_the_poisoned_steps(setup):
    trainer, clean, pool, attack = setup
    state = _fresh(trainer)
    # Epoch 0 through the attack (its mask, 2 triggered examples per batch), then epochs
    # with new masks: the mask is data, not a constant.
    state, stats = attack.train_epoch(trainer, state, clean, pool, jax.random.key(1))
    assert (stats.poison_steps, stats.clean_steps) == (3, 3)
    poisoned = trainer.compiled_steps(pcb_training.poisoned_step_variant("freeze", None, 2))
    poison_compiles = poisoned._cache_size()
    clean_compiles = trainer.compiled_steps(PLAIN)._cache_size()
    for epoch in range(2):
        mask = _random_mask(10 + epoch, 0.3)
        state, _ = pcb_training.train_epoch_alternating(
            trainer, state, clean, pool, jax.random.key(epoch), update_mask=mask,
            poison_batch_size=2,
        )  # fmt: skip
    # Poisoned steps: compiled for the attack's epoch (or by an earlier test), then reused.
    assert poisoned._cache_size() == poison_compiles
    assert trainer.compiled_steps(pcb_training.poisoned_step_variant("freeze", None, 2)) is (
        poisoned
    )
    # Later alternating epochs compile no new clean step either.
    assert trainer.compiled_steps(PLAIN)._cache_size() == clean_compiles


def test_alternating_epochs_reuse_train_epochs_clean_steps(setup):
    _, clean, pool, attack = setup
    trainer = _trainer()  # its own compiled functions, whatever earlier tests called
    state = _fresh(trainer)
    state, _, _ = trainer.train_epoch(state, clean, jax.random.key(0))
    clean_compiles = trainer.compiled_steps(PLAIN)._cache_size()
    state, _ = attack.train_epoch(trainer, state, clean, pool, jax.random.key(1))
    # Clean steps are train_epoch's compiled function (one step per call on the CPU).
    assert trainer.compiled_steps(PLAIN)._cache_size() == clean_compiles
    state, _, _ = trainer.train_epoch(state, clean, jax.random.key(3))
    assert trainer.compiled_steps(PLAIN)._cache_size() == clean_compiles


def test_poison_transform_gets_the_poison_rows_in_a_step_of_its_own(setup):
    trainer, clean, pool, attack = setup
    traced = []
    trigger = badnets(size=2)

    def transform(key, images, labels):  # records what it is traced with
        traced.append((images.shape, labels.shape))
        return trigger.train_fn(key, images, labels)

    state = _fresh(trainer)
    for epoch in range(2):
        state, stats = pcb_training.train_epoch_alternating(
            trainer, state, clean, pool, jax.random.key(epoch), update_mask=attack.update_mask,
            poison_batch_size=3, poison_transform=transform,
        )  # fmt: skip
        assert stats.poison_steps == 3 and np.isfinite(stats.poison_loss)
    assert traced == [((3, 8, 8, 3), (3,))]  # traced once, on the 3 poison rows
    variant = pcb_training.poisoned_step_variant("freeze", transform, 3)
    assert trainer.compiled_steps(variant)._cache_size() == 1


def test_alternating_epoch_keeps_pruned_weights_at_zero(setup):
    trainer, clean, pool, _ = setup
    # On the host: a float32 device mask would become the state's own buffer and be donated.
    pruning = _host(_random_mask(12, 0.6))
    state = _fresh(trainer, mask=pruning)
    # "gradient" mode with wholly poisoned batches (poison_batch_size=None: no clean fill).
    for mode, k in (("freeze", 2), ("gradient", None)):
        state, stats = pcb_training.train_epoch_alternating(
            trainer, state, clean, pool, jax.random.key(0), update_mask=_random_mask(13, 0.5),
            poison_batch_size=k, update_mask_mode=mode,
        )  # fmt: skip
        assert np.isfinite(stats.poison_loss)
        for p, m in zip(*map(jax.tree.leaves, _host((state.params, pruning))), strict=True):
            assert np.all(p[m == 0] == 0), mode


def test_dispatch_plan_uses_one_chunk_shape_per_kind():
    plan, schedule = pcb_training.dispatch_plan, pcb_training.alternating_schedule
    # P C C P C C P: clean runs of 2 scanned in pairs, poisoned steps one per call.
    assert plan(schedule(7, 3), 4) == [
        (True, 1, 1), (False, 2, 1), (True, 1, 1), (False, 2, 1), (True, 1, 1)
    ]  # fmt: skip
    # A short last clean run forces single steps for every clean run (one shape per kind).
    assert plan(schedule(7, 4), 4) == [
        (True, 1, 1), (False, 1, 3), (True, 1, 1), (False, 1, 2)
    ]  # fmt: skip
    assert plan(schedule(8, 4), 4)[1] == (False, 3, 1)
    assert plan(schedule(6, 1), 4) == [(True, 3, 2)]
    assert plan(schedule(6, 2), 1) == [(True, 1, 1), (False, 1, 1)] * 3


def test_scanned_calls_match_single_steps(setup):
    # On accelerators a run of same-kind steps is scanned; the result must not depend on it.
    # poison_every=1: one run of 6 poisoned steps, scanned 3 per call. (Scanned clean steps
    # are train_epoch's scanned function, tested in test_trainer.py.)
    single, clean, pool, _ = setup
    scanned = _trainer(steps_per_call=4)
    mask = _random_mask(14, 0.3)
    results = []
    for trainer in (single, scanned):
        state, stats = pcb_training.train_epoch_alternating(
            trainer, _fresh(trainer), clean, pool, jax.random.key(0), update_mask=mask,
            poison_every=1, poison_batch_size=3,
        )  # fmt: skip
        results.append((_host(state.params), stats.poison_steps, stats.clean_steps))
    assert results[0][1:] == results[1][1:] == (6, 0)
    chex.assert_trees_all_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)


def test_alternating_epoch_on_two_devices_matches_one(setup):
    one, clean, pool, _ = setup
    two = _trainer(num_devices=2)
    mask = _random_mask(15, 0.3)
    params = []
    for trainer in (one, two):
        c = trainer.put(*jax.device_get((clean.images, clean.labels)))
        p = trainer.put(*jax.device_get((pool.images, pool.labels)))
        state, _ = pcb_training.train_epoch_alternating(
            trainer, _fresh(trainer), c, p, jax.random.key(0), update_mask=mask,
            poison_batch_size=3,
        )  # fmt: skip
        assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == trainer.mesh.size
        params.append(_host(state.params))
    chex.assert_trees_all_close(params[0], params[1], rtol=1e-4, atol=1e-5)


def test_alternating_epoch_rejects_bad_arguments(setup):
    trainer, clean, pool, _ = setup
    state = _fresh(trainer)
    mask = _random_mask(16, 0.5)
    epoch = functools.partial(
        pcb_training.train_epoch_alternating, trainer, state, clean, pool, jax.random.key(0)
    )
    with pytest.raises(ValueError, match="poison_batch_size"):
        epoch(update_mask=mask, poison_batch_size=B + 1)
    with pytest.raises(ValueError, match="structure of the parameters"):
        epoch(update_mask={"Conv_0": mask["Conv_0"]})
    with pytest.raises(ValueError, match="update_mask_mode"):
        epoch(update_mask=mask, update_mask_mode="soft")


@pytest.mark.parametrize("stop", [2, 4])  # in a clean run, then right after a poisoned step
def test_a_stopped_alternating_epoch_resumes_exactly(setup, monkeypatch, stop):
    trainer, clean, pool, _ = setup
    mask = _random_mask(17, 0.3)

    def epoch(state, **kwargs):
        return pcb_training.train_epoch_alternating(
            trainer, state, clean, pool, jax.random.key(5), update_mask=mask,
            poison_every=3, poison_batch_size=3, **kwargs,
        )  # fmt: skip

    whole, want = epoch(_fresh(trainer))  # P C C P C C, one step per call
    count = itertools.count(1)
    monkeypatch.setattr(preemption, "stop_requested", lambda: next(count) >= stop)
    part, stopped = epoch(_fresh(trainer), preemptible=True)
    assert stopped.progress.steps == stop == stopped.clean_steps + stopped.poison_steps
    monkeypatch.undo()
    resume = EpochProgress.from_json(stopped.progress.to_json())
    state, got = epoch(part, resume=resume)
    assert got.progress is None
    # Every figure but the timing, bit for bit, and the same final state.
    assert got._replace(seconds=0, images_per_second=0) == want._replace(
        seconds=0, images_per_second=0
    )
    chex.assert_trees_all_equal(_host(state.params), _host(whole.params))
    chex.assert_trees_all_equal(_host(state.batch_stats), _host(whole.batch_stats))


def test_a_pcb_phase_stops_mid_epoch_and_resumes_exactly(setup, monkeypatch, tmp_path):
    trainer, clean, pool, attack = setup
    epoch_fn = pcb_training._EpochFn(attack, trainer, pool)  # what make_epoch_fn returns

    def phase(path):
        rundir = RunDir(str(path))
        rundir.open({"name": "pcb"})
        try:
            return train_phase(
                "dense", trainer, _fresh(trainer), clean, epochs=2,
                shuffle_key=jax.random.key(6), rundir=rundir, evaluate_fn=None, eval_every=0,
                epoch_fn=epoch_fn,
            )  # fmt: skip
        finally:
            rundir.close()

    want, want_row, _ = phase(tmp_path / "uninterrupted")
    count = itertools.count(1)
    monkeypatch.setattr(preemption, "armed", lambda: True)
    # Asked after each of epoch 1's first 5 calls, at its end, then in epoch 2: stop after 2.
    monkeypatch.setattr(preemption, "stop_requested", lambda: next(count) >= 8)
    with pytest.raises(preemption.Preempted, match=r"epoch 2/2, after step 2 of 6"):
        phase(tmp_path / "stopped")
    monkeypatch.undo()
    state, row, _ = phase(tmp_path / "stopped")
    for key in ("step", "loss", "accuracy", "lr", "poison_loss", "poison_accuracy"):
        assert row[key] == want_row[key], key
    chex.assert_trees_all_equal(_host(state.params), _host(want.params))
