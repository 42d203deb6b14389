"""Ensembles trained with vmap equal their members trained one by one, with shared data (an
ensemble) or one dataset per member (replicate seeds).

On the tiny test network (convolutions, BatchNorm statistics, a dense head: what vmap must
batch in any model), which compiles in a second where a width-2 ResNet-18 took 25."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.data import make_synthetic
from jaxbd.models import tiny_cnn
from jaxbd.train import CosineSchedule, Trainer, make_mesh

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def trainer():
    return Trainer(
        tiny_cnn(num_classes=10, width=4, dtype=jnp.float32),
        make_mesh(1),
        batch_size=16,
        eval_batch_size=16,
        mean=MEAN,
        std=STD,
        steps_per_call=2,
        progress=False,
    )


def member(trainer, m):
    return trainer.init_state(
        jax.random.key(10 + m),
        (8, 8, 3),
        CosineSchedule.create(0.05, 8),
        rng=jax.random.key(20 + m),
    )


def assert_close_params(a, b):
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        # Batched convolutions sum in another order; BatchNorm on 16 examples amplifies
        # the rounding a little over 4 steps.
        np.testing.assert_allclose(x, y, rtol=3e-3, atol=3e-4)


def test_vmapped_members_match_sequential_members(trainer):
    splits = make_synthetic(num_train=64, num_test=8, image_size=8, seed=0)
    data = trainer.put(splits.train.images, splits.train.labels)
    keys = [jax.random.key(30 + m) for m in range(2)]
    sequential = []
    for m in range(2):
        state, stats, pres = trainer.train_epoch(
            member(trainer, m), data, keys[m], record_presentations=True
        )
        sequential.append((state, stats, pres))
    stacked, stats, pres = trainer.train_epoch_ensemble(
        trainer.stack([member(trainer, 0), member(trainer, 1)]),
        data,
        jnp.stack(keys),
        record_presentations=True,
    )
    for m in range(2):
        state, seq_stats, seq_pres = sequential[m]
        mine = trainer.unstack(stacked, m)
        assert_close_params(mine, state)
        assert int(mine.step) == int(state.step) == 4
        np.testing.assert_allclose(stats[m].loss, seq_stats.loss, rtol=1e-4)
        np.testing.assert_array_equal(pres[m].indices, seq_pres.indices)
    # The members differ from each other (own init, shuffle and augmentation).
    p0, p1 = (jax.tree.leaves(trainer.unstack(stacked, m).params)[0] for m in range(2))
    assert not np.allclose(p0, p1)


def test_members_with_their_own_data_and_subsets_match_sequential_members(trainer):
    # Replicate seeds of a grid: each member has its own dataset and its own coreset.
    datasets, subsets = [], []
    for m in range(2):
        splits = make_synthetic(num_train=64, num_test=8, image_size=8, seed=m)
        weights = np.linspace(0.5, 1.5, 64).astype(np.float32)[:: -1 if m else 1]
        datasets.append(trainer.put(splits.train.images, splits.train.labels, weights))
        subsets.append(jnp.asarray(np.random.default_rng(m).permutation(64)[:32], jnp.int32))
    keys = [jax.random.key(30 + m) for m in range(2)]
    stacked, stats, _ = trainer.train_epoch_ensemble(
        trainer.stack([member(trainer, 0), member(trainer, 1)]),
        trainer.stack_data(datasets),
        jnp.stack(keys),
        indices=jnp.stack(subsets),
    )
    for m in range(2):
        state, seq_stats, _ = trainer.train_epoch(
            member(trainer, m), datasets[m], keys[m], indices=subsets[m]
        )
        assert int(trainer.unstack(stacked, m).step) == int(state.step) == 2
        assert_close_params(trainer.unstack(stacked, m), state)
        np.testing.assert_allclose(stats[m].loss, seq_stats.loss, rtol=1e-4)
    # Training member 0 on member 1's data instead gives another model: the data is per member.
    other, _, _ = trainer.train_epoch(member(trainer, 0), datasets[1], keys[0], indices=subsets[1])
    with pytest.raises(AssertionError):
        assert_close_params(trainer.unstack(stacked, 0), other)


def test_stacked_data_must_match_members(trainer):
    small = make_synthetic(num_train=32, num_test=8, image_size=8, seed=0).train
    large = make_synthetic(num_train=64, num_test=8, image_size=8, seed=0).train
    with pytest.raises(ValueError, match="one shape"):
        trainer.stack_data([trainer.put(d.images, d.labels) for d in (small, large)])
    data = trainer.stack_data([trainer.put(small.images, small.labels)] * 3)
    with pytest.raises(ValueError, match="2 members but 3 stacked datasets"):
        trainer.train_epoch_ensemble(
            trainer.stack([member(trainer, 0), member(trainer, 1)]),
            data,
            jnp.stack([jax.random.key(0), jax.random.key(1)]),
        )
