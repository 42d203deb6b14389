"""Phases stop mid-epoch at a preemption request and resume exactly: members trained
together (`train_phase_group`), each saving its done part, and a phase recording
presentations (forgetting statistics), whose hook sees the uninterrupted epoch's, and an
ensemble trained as one phase by a resumable epoch function."""

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.data import make_synthetic
from jaxbd.models import tiny_cnn
from jaxbd.runs import RunDir, train_phase, train_phase_group
from jaxbd.train import CosineSchedule, Trainer, make_mesh, preemption


def host(x):
    """A leaf on the host (a typed PRNG key as its key data)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


@pytest.fixture(scope="module")
def trainer():
    return Trainer(
        tiny_cnn(num_classes=10, width=4, dtype=jnp.float32),
        make_mesh(1),
        batch_size=16,
        eval_batch_size=16,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        steps_per_call=1,
        progress=False,
    )


def group(trainer, root):
    """Two members with their own data (4 steps per epoch, one per call), 2 epochs."""
    rundirs, datasets, states = [], [], []
    for m in range(2):
        rundir = RunDir(os.path.join(root, f"seed{m}"))
        rundir.open({"name": f"seed{m}"})
        rundirs.append(rundir)
        train = make_synthetic(num_train=64, num_test=8, image_size=8, seed=m).train
        datasets.append(trainer.put(train.images, train.labels))
        states.append(
            trainer.init_state(
                jax.random.key(10 + m),
                (8, 8, 3),
                CosineSchedule.create(0.05, 8),
                rng=jax.random.key(20 + m),
            )
        )
    try:
        return train_phase_group(
            "dense", trainer, states, datasets, epochs=2,
            shuffle_keys=[jax.random.key(30), jax.random.key(31)], rundirs=rundirs,
            evaluate_fns=[None, None], eval_every=0,
        )  # fmt: skip
    finally:
        for rundir in rundirs:
            rundir.close()


def test_a_group_stopped_mid_epoch_resumes_exactly(trainer, tmp_path, monkeypatch):
    want_states, want_rows = group(trainer, str(tmp_path / "uninterrupted"))
    count = itertools.count(1)
    monkeypatch.setattr(preemption, "armed", lambda: True)
    # Asked after epoch 1's first three calls, at its end, then after each call of epoch 2:
    # stop after its second.
    monkeypatch.setattr(preemption, "stop_requested", lambda: next(count) >= 6)
    root = str(tmp_path / "stopped")
    with pytest.raises(preemption.Preempted, match=r"epoch 2/2, after step 2 of 4") as stop:
        group(trainer, root)
    assert (stop.value.epoch, stop.value.step_in_epoch) == (2, 2)
    for m in range(2):
        assert os.listdir(os.path.join(root, f"seed{m}", "checkpoints", "dense.mid_epoch")) == ["6"]
    monkeypatch.undo()

    states, rows = group(trainer, root)  # resumes both members at step 2 of epoch 2
    for m in range(2):
        for key in ("epoch", "step", "loss", "accuracy", "lr", "trained_together"):
            assert rows[m][key] == want_rows[m][key], (m, key)
        for x, y in zip(jax.tree.leaves(states[m]), jax.tree.leaves(want_states[m]), strict=True):
            np.testing.assert_array_equal(host(x), host(y))
        assert sorted(os.listdir(os.path.join(root, f"seed{m}", "checkpoints"))) == ["dense"]
        logged = RunDir(os.path.join(root, f"seed{m}")).read_metrics()
        assert {"event": "resume", "phase": "dense", "epoch": 1, "step_in_epoch": 2} in logged
        assert [r["epoch"] for r in logged if r.get("event") == "epoch"] == [1, 2]


def test_a_phase_recording_presentations_stops_mid_epoch_and_resumes_exactly(
    trainer, tmp_path, monkeypatch
):
    train = make_synthetic(num_train=64, num_test=8, image_size=8, seed=0).train
    data = trainer.put(train.images, train.labels)

    def hook(epoch, state, presentations, aux):  # what forgetting statistics read
        return aux + jnp.zeros(64, jnp.int32).at[presentations.indices].add(
            presentations.correct.astype(jnp.int32)
        )

    def phase(path):
        rundir = RunDir(str(path))
        rundir.open({"name": "forgetting"})
        state = trainer.init_state(
            jax.random.key(1), (8, 8, 3), CosineSchedule.create(0.05, 8), rng=jax.random.key(2)
        )
        try:
            return train_phase(
                "pretrain", trainer, state, data, epochs=2, shuffle_key=jax.random.key(3),
                rundir=rundir, evaluate_fn=None, eval_every=0, aux=jnp.zeros(64, jnp.int32),
                epoch_hook=hook, record_presentations=True,
            )  # fmt: skip
        finally:
            rundir.close()

    want, want_row, want_aux = phase(tmp_path / "uninterrupted")
    count = itertools.count(1)
    monkeypatch.setattr(preemption, "armed", lambda: True)
    monkeypatch.setattr(preemption, "stop_requested", lambda: next(count) >= 5)  # epoch 2
    with pytest.raises(preemption.Preempted, match=r"epoch 2/2, after step 1 of 4"):
        phase(tmp_path / "stopped")
    monkeypatch.undo()
    state, row, aux = phase(tmp_path / "stopped")
    np.testing.assert_array_equal(aux, want_aux)
    for key in ("step", "loss", "accuracy", "lr"):
        assert row[key] == want_row[key], key
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(host(x), host(y))


class _Ensemble:
    """An ensemble trained as one phase (as EL2N pretraining does): a resumable epoch
    function whose done part is each member's."""

    resumable = True

    def __init__(self, trainer):
        self.trainer = trainer

    def __call__(self, states, data, keys, *, indices=None, desc="", resume=None, **kwargs):
        kwargs.pop("record_presentations", None)
        states, stats, _ = self.trainer.train_epoch_ensemble(
            states, data, keys, desc=desc, resume=resume, **kwargs
        )
        progress = None if stats[0].progress is None else [s.progress for s in stats]
        return states, stats[0]._replace(progress=progress), None


def test_an_ensemble_phase_stops_mid_epoch_with_each_members_done_part(
    trainer, tmp_path, monkeypatch
):
    train = make_synthetic(num_train=64, num_test=8, image_size=8, seed=0).train
    data = trainer.put(train.images, train.labels)

    def phase(path):
        rundir = RunDir(str(path))
        rundir.open({"name": "ensemble"})
        states = trainer.stack(
            [
                trainer.init_state(
                    jax.random.key(m),
                    (8, 8, 3),
                    CosineSchedule.create(0.05, 8),
                    rng=jax.random.key(5 + m),
                )
                for m in range(2)
            ]
        )
        keys = jnp.stack([jax.random.key(7), jax.random.key(8)])
        try:
            return train_phase(
                "pretrain_ensemble", trainer, states, data, epochs=2, shuffle_key=keys,
                rundir=rundir, evaluate_fn=None, eval_every=0, epoch_fn=_Ensemble(trainer),
            )  # fmt: skip
        finally:
            rundir.close()

    want, want_row, _ = phase(tmp_path / "uninterrupted")
    count = itertools.count(1)
    monkeypatch.setattr(preemption, "armed", lambda: True)
    monkeypatch.setattr(preemption, "stop_requested", lambda: next(count) >= 6)  # epoch 2
    with pytest.raises(preemption.Preempted, match=r"epoch 2/2, after step 2 of 4"):
        phase(tmp_path / "stopped")
    monkeypatch.undo()
    state, row, _ = phase(tmp_path / "stopped")
    for key in ("step", "loss", "accuracy", "lr"):
        assert row[key] == want_row[key], key
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(host(x), host(y))
