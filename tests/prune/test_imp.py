"""IMP with rewinding: compounding sparsity (on every kernel of a small ResNet-18), and on
the tiny test network masks through training steps, rewinding, no recompilation, controls
and resumption."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd import prune, rng, runs
from jaxbd.data import make_synthetic
from jaxbd.models import resnet18, tiny_cnn
from jaxbd.train import CosineSchedule, Trainer, make_mesh

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SHAPE = (16, 16, 3)


@pytest.fixture(scope="module")
def setup():
    splits = make_synthetic(num_train=128, num_test=64, image_size=16, seed=0)
    trainer = Trainer(
        tiny_cnn(num_classes=10, width=8),
        make_mesh(1),
        batch_size=32,
        eval_batch_size=64,
        mean=MEAN,
        std=STD,
        progress=False,
    )
    data = trainer.put(splits.train.images, splits.train.labels)
    return trainer, data


def fresh_state(trainer, mask=None):
    return trainer.init_state(
        jax.random.key(0), SHAPE, CosineSchedule.create(0.1, 100), rng=jax.random.key(1), mask=mask
    )


def kernel_leaves(tree):
    return {
        prune.path_name(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if prune.is_kernel(path, leaf)
    }


def test_resnet_masks_prune_every_kernel_and_nothing_else():
    # The ResNet's parameter tree, its values drawn here (compiling its init takes seconds).
    model, x = resnet18(num_classes=10, width=4), jnp.zeros((1, *SHAPE))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
    draw = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(draw.normal(size=s.shape), s.dtype), shapes)
    mask = None
    for _ in range(3):
        mask = prune.magnitude_masks(params, 0.3, mask=mask)
    kernels = kernel_leaves(params)
    # Every conv and the dense head (stem, 16 block convs, 3 projections, head = 21 kernels).
    assert len(kernels) == 21
    for name, kept in prune.survivors(mask).items():
        assert kept == prune.survivor_counts(kernels[name].size, 0.3, 3)[-1], name
    for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]:
        if not prune.is_kernel(path, leaf):
            assert bool(np.all(leaf)), prune.path_name(path)


def test_masked_training_keeps_pruned_weights_and_momentum_zero(setup):
    trainer, data = setup
    mask = prune.magnitude_masks(fresh_state(trainer).params, 0.5)
    state = fresh_state(trainer, mask=mask)
    state, _, _ = trainer.train_epoch(state, data, jax.random.key(2))
    momentum = optax_params(state.opt_state)
    for p, buf, m in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(momentum), jax.tree.leaves(mask), strict=True
    ):
        m = np.asarray(m)
        assert np.all(np.asarray(p)[~m] == 0) and np.all(np.asarray(buf)[~m] == 0)
        assert np.any(np.asarray(buf)[m] != 0)  # the survivors did train


def test_new_mask_does_not_recompile_the_step(setup):
    trainer, data = setup
    step = jax.jit(chex.assert_max_traces(trainer.train_step, n=1))
    images, labels = data.images[:32], data.labels[:32]
    weights = jnp.ones(32)
    mask = None
    for _ in range(3):  # dense, then two IMP masks: one trace
        state = fresh_state(trainer, mask=mask)
        state, _ = step(state, images, labels, weights)
        mask = prune.magnitude_masks(state.params, 0.3, mask=mask)


def test_rewind_restores_survivors_and_masks_momentum(setup):
    trainer, data = setup
    state = fresh_state(trainer)
    state, _, _ = trainer.train_epoch(state, data, jax.random.key(3))
    rewind_point = jax.tree.map(lambda x: x, state)
    expected = jax.device_get((state.params, state.opt_state, state.batch_stats, state.step))
    later, _, _ = trainer.train_epoch(
        prune.rewind(rewind_point, prune.full_mask(state.params), trainer.tx),
        data,
        jax.random.key(4),
    )
    mask = prune.magnitude_masks(later.params, 0.3)
    rewound = prune.rewind(rewind_point, mask, trainer.tx)
    for got, want, m in zip(
        jax.tree.leaves(rewound.params),
        jax.tree.leaves(expected[0]),
        jax.tree.leaves(mask),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(got), np.where(np.asarray(m), want, 0))
    momentum = optax_params(rewound.opt_state)
    for got, want, m in zip(
        jax.tree.leaves(momentum),
        jax.tree.leaves(optax_params(expected[1])),
        jax.tree.leaves(mask),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(got), np.where(np.asarray(m), want, 0))
    chex.assert_trees_all_equal(rewound.batch_stats, expected[2])
    assert int(rewound.step) == int(expected[3])
    # The rewound state is a copy: donating it to training leaves the rewind point usable.
    trainer.train_epoch(rewound, data, jax.random.key(5))
    again = prune.rewind(rewind_point, mask, trainer.tx)
    chex.assert_trees_all_equal(again.batch_stats, expected[2])


def optax_params(opt_state):
    """The momentum buffer tree of `sgd_direction`'s state (the only parameter-shaped part)."""
    trees = [
        leaf
        for leaf in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, dict))
        if isinstance(leaf, dict)
    ]
    assert len(trees) == 1
    return trees[0]


def imp_settings(**settings):
    base = dict(rounds=2, rate=0.3, rewind_epoch=1, round_epochs=2, final_epochs=1)
    return prune.IMPSettings(**{**base, **settings})


def run(trainer, data, tmp_path, name, **settings):
    """IMP through checkpointed phases in a run directory (as the experiment pipeline runs
    it)."""
    rundir = runs.RunDir(tmp_path / name)
    rundir.open({"test": name})
    spe = trainer.steps_per_epoch(len(data))

    def phases(phase, states, keys, epochs, evaluate_fns, eval_every):
        return runs.train_phase_group(
            phase,
            trainer,
            states,
            [data],
            epochs=epochs,
            shuffle_keys=keys,
            rundirs=[rundir],
            evaluate_fns=evaluate_fns,
            eval_every=eval_every,
        )

    return prune.run_imp(
        trainer,
        data,
        imp_settings(**settings),
        init_key=jax.random.key(0),
        stream=lambda name: rng.stream(7, name),
        make_schedule=lambda epochs: CosineSchedule.create(0.1, epochs * spe),
        image_shape=SHAPE,
        train_phases=phases,
        log=lambda member, row: rundir.log(row),
    ), rundir


def test_run_imp_in_memory_matches_the_checkpointed_phases(setup, tmp_path):
    """A user's own loop: no run directory, nothing written, the same network."""
    trainer, data = setup
    spe = trainer.steps_per_epoch(len(data))
    rounds = []
    in_memory = prune.run_imp(
        trainer,
        data,
        imp_settings(),
        init_key=jax.random.key(0),
        stream=lambda name: rng.stream(7, name),
        make_schedule=lambda epochs: CosineSchedule.create(0.1, epochs * spe),
        image_shape=SHAPE,
        log=lambda member, row: rounds.append(row),
    )
    checkpointed, _ = run(trainer, data, tmp_path, "imp")
    chex.assert_trees_all_equal(in_memory.mask, checkpointed.mask)
    chex.assert_trees_all_equal(in_memory.state.params, checkpointed.state.params)
    assert [r["round"] for r in rounds] == [1, 2]
    assert in_memory.last_row["phase"] == "pruned" and in_memory.last_row["epoch"] == 1


def test_run_imp_rounds_sparsity_and_resume(setup, tmp_path):
    trainer, data = setup
    result, rundir = run(trainer, data, tmp_path, "imp")
    kernels = kernel_leaves(result.state.params)
    total = sum(k.size for k in kernels.values())
    expected = [
        1 - sum(prune.survivor_counts(k.size, 0.3, r)[-1] for k in kernels.values()) / total
        for r in (1, 2)
    ]
    assert result.round_sparsity == pytest.approx(expected)
    assert result.sparsity["total"] == pytest.approx(expected[-1])
    mask = kernel_leaves(result.mask)
    for name, k in kernels.items():
        assert np.all(k[~mask[name]] == 0) and np.any(k[mask[name]] != 0)
    phases = [r.get("phase") for r in rundir.read_metrics() if r.get("event") == "epoch"]
    assert phases == ["imp_rewind", "imp_round1", "imp_round2", "pruned"]
    # Resuming a finished IMP run trains nothing and returns the same network.
    again, rundir = run(trainer, data, tmp_path, "imp")
    chex.assert_trees_all_equal(again.state.params, result.state.params)
    chex.assert_trees_all_equal(again.mask, result.mask)
    assert [r.get("phase") for r in rundir.read_metrics() if r.get("event") == "epoch"] == phases


def test_controls_keep_the_counts(setup, tmp_path):
    trainer, data = setup
    imp, _ = run(trainer, data, tmp_path, "imp", rounds=1, round_epochs=2, rewind_epoch=0)
    reinit, _ = run(trainer, data, tmp_path, "reinit", rounds=1, control="reinit")
    random, rundir = run(
        trainer, data, tmp_path, "random", rounds=1, control="random_mask", rewind_epoch=0
    )
    counts = prune.survivors(imp.mask)
    assert prune.survivors(reinit.mask) == counts == prune.survivors(random.mask)
    assert not np.array_equal(
        np.asarray(random.mask["conv1"]["kernel"]), np.asarray(imp.mask["conv1"]["kernel"])
    )
    # The random-mask control needs no rounds; rewind_epoch=0 rewinds to initialization.
    assert [r["phase"] for r in rundir.read_metrics() if r.get("event") == "epoch"] == ["pruned"]


def test_settings_errors():
    with pytest.raises(ValueError, match="rounds: must be >= 1"):
        prune.IMPSettings(rounds=0)
    with pytest.raises(ValueError, match="round_epochs: must exceed rewind_epoch=3"):
        prune.IMPSettings(rewind_epoch=3, round_epochs=3)
    with pytest.raises(ValueError, match="control: must be one of"):
        prune.IMPSettings(control="shuffle")
