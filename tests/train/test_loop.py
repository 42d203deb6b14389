"""The engine's one loop (`jaxbd.train.loop`): a step range, an ensemble epoch or an epoch
recording presentations stopped at a preemption request and resumed from its done part ends
exactly as an uninterrupted one, bit for bit; without `preemptible` a request changes
nothing."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.data import make_synthetic
from jaxbd.models import tiny_cnn
from jaxbd.train import CosineSchedule, EpochProgress, Trainer, loop, make_mesh, preemption

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def host(x):
    """A leaf on the host (a typed PRNG key as its key data)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


@pytest.fixture(scope="module")
def setup():
    trainer = Trainer(
        tiny_cnn(num_classes=10, width=4, dtype=jnp.float32),
        make_mesh(1),
        batch_size=16,
        eval_batch_size=16,
        mean=MEAN,
        std=STD,
        steps_per_call=2,
        progress=False,
    )
    splits = make_synthetic(num_train=64, num_test=8, image_size=8, seed=0)
    weights = np.linspace(0.5, 1.5, 64).astype(np.float32)
    return trainer, trainer.put(splits.train.images, splits.train.labels, weights)


def fresh(trainer, m=0):
    return trainer.init_state(
        jax.random.key(10 + m),
        (8, 8, 3),
        CosineSchedule.create(0.05, 16),
        rng=jax.random.key(20 + m),
    )


@pytest.fixture
def stop_after(monkeypatch):
    """`stop_after(n)`: a preemption request is seen after the n-th call (and every later)."""

    def arm(calls):
        count = itertools.count(1)
        monkeypatch.setattr(preemption, "stop_requested", lambda: next(count) >= calls)

    return arm


def assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(host(x), host(y))


def figures(stats):
    return (stats.loss, stats.accuracy, stats.lr, stats.steps, dict(stats.extra))


def test_chunk_size_keeps_one_call_shape():
    assert loop.chunk_size(8, 0, 4) == 4
    assert loop.chunk_size(6, 0, 4) == 3
    assert loop.chunk_size(8, 4, 4) == 4
    assert loop.chunk_size(8, 3, 4) == 1  # 5 steps left: calls of one step


def test_a_stopped_step_range_resumes_exactly(setup, stop_after):
    trainer, data = setup
    key = jax.random.key(3)
    # Steps 3..7 of the stream cross an epoch boundary (4 steps per epoch): 5 calls of 1.
    whole, whole_stats = trainer.train_steps(fresh(trainer), data, key, start=3, steps=5)
    stop_after(2)
    part, part_stats = trainer.train_steps(
        fresh(trainer), data, key, start=3, steps=5, preemptible=True
    )
    progress = part_stats.progress
    assert (progress.steps, part_stats.steps, int(part.step)) == (2, 2, 2)
    # Through JSON, as a mid-epoch checkpoint keeps it.
    progress = EpochProgress.from_json(progress.to_json())
    state, stats = trainer.train_steps(part, data, key, start=3, steps=5, resume=progress)
    assert stats.progress is None and int(state.step) == 5
    assert figures(stats) == figures(whole_stats)
    assert_same(state, whole)


def test_without_preemptible_a_request_changes_nothing(setup, stop_after):
    trainer, data = setup
    stop_after(1)
    state, stats = trainer.train_steps(fresh(trainer), data, jax.random.key(3), start=0, steps=4)
    assert stats.progress is None and stats.steps == 4 and int(state.step) == 4


def test_a_stopped_ensemble_epoch_resumes_exactly(setup, stop_after):
    trainer, data = setup
    keys = jnp.stack([jax.random.key(30), jax.random.key(31)])
    # 48 examples: 3 steps, one per call (as on the CPU); shared or one subset per member.
    subset = jnp.asarray(np.random.default_rng(0).permutation(64)[:48], jnp.int32)
    subsets = jnp.stack([subset, subset[::-1]])
    for indices, stop in ((subset, 1), (subset, 2), (subsets, 2)):
        members = [fresh(trainer, 0), fresh(trainer, 1)]
        whole, whole_stats, _ = trainer.train_epoch_ensemble(
            trainer.stack(members), data, keys, indices=indices
        )
        stop_after(stop)
        part, part_stats, _ = trainer.train_epoch_ensemble(
            trainer.stack(members), data, keys, indices=indices, preemptible=True
        )
        done = part_stats[0].progress.steps
        assert [s.progress.steps for s in part_stats] == [done, done]
        assert done == stop
        assert int(trainer.unstack(part, 1).step) == done
        resume = [EpochProgress.from_json(s.progress.to_json()) for s in part_stats]
        state, stats, _ = trainer.train_epoch_ensemble(
            part, data, keys, indices=indices, resume=resume
        )
        assert [figures(s) for s in stats] == [figures(s) for s in whole_stats]
        assert all(s.progress is None for s in stats)
        assert_same(state, whole)


def test_ensemble_resume_is_checked(setup):
    trainer, data = setup
    keys = jnp.stack([jax.random.key(30), jax.random.key(31)])
    progress = EpochProgress(2, (1.0, 1.0), 3, {}, 0.1)
    stacked = trainer.stack([fresh(trainer, 0), fresh(trainer, 1)])
    with pytest.raises(ValueError, match="one done part per member"):
        trainer.train_epoch_ensemble(stacked, data, keys, resume=[progress])
    with pytest.raises(ValueError, match="no presentations"):
        trainer.train_epoch_ensemble(
            stacked, data, keys, resume=[progress] * 2, record_presentations=True
        )


def test_a_stopped_epoch_keeps_its_presentations(setup, stop_after):
    trainer, data = setup
    key = jax.random.key(4)
    subset = jnp.asarray(np.random.default_rng(1).permutation(64)[:48], jnp.int32)  # 3 steps
    epoch = functools.partial(
        trainer.train_epoch, data=data, key=key, indices=subset, record_presentations=True
    )
    whole, want, want_presentations = epoch(fresh(trainer))
    stop_after(1)
    part, stopped, presentations = epoch(fresh(trainer), preemptible=True)
    assert presentations is None and stopped.progress.steps == 1
    resume = EpochProgress.from_json(stopped.progress.to_json())
    assert resume.unpack(16).shape == (1, 16)
    state, got, presentations = epoch(part, resume=resume)
    assert figures(got) == figures(want)
    assert_same(state, whole)
    assert_same(presentations, want_presentations)  # the done part's, then the rest's
    with pytest.raises(ValueError, match="no presentations of its done part"):
        epoch(fresh(trainer), resume=resume._replace(presented=None))
