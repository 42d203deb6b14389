"""The phase loop's guard against a diverged run, and the scheduling of grouped phases (the
rest of `train_phase` is exercised by the experiment and selection-pipeline tests; grouped
training of real models by the ensemble and sweep tests)."""

import json
import os

import flax.struct
import jax
import jax.numpy as jnp
import pytest

from jaxbd import runs as runlog
from jaxbd.runs import TrainingDivergedError, train_phase, train_phase_group
from jaxbd.train import EpochStats


@flax.struct.dataclass
class CountingState:
    step: jax.Array
    weight: jax.Array


def _epoch_fn(losses):
    """An epoch that takes one step and reports the next loss of `losses`."""

    def epoch(state, data, key, *, indices=None, desc="", record_presentations=False):
        loss = losses[int(state.step)]
        state = state.replace(step=state.step + 1, weight=state.weight + 1.0)
        stats = EpochStats(
            loss=loss, accuracy=0.5, lr=0.1, steps=1, seconds=1.0, images_per_second=1.0
        )
        return state, stats, None

    return epoch


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_the_phase_and_keeps_the_last_good_checkpoint(tmp_path, bad):
    rundir = runlog.RunDir(str(tmp_path / "run"))
    rundir.open({"name": "test"})
    state = CountingState(step=jnp.int32(0), weight=jnp.float32(0.0))
    with pytest.raises(TrainingDivergedError, match=r"after epoch 2 of 4.*lower config\.train\.lr"):
        train_phase(
            "dense", None, state, None, epochs=4, shuffle_key=jax.random.key(0),
            rundir=rundir, evaluate_fn=None, eval_every=0,
            epoch_fn=_epoch_fn([2.3, bad, 1.0, 1.0]),
        )  # fmt: skip
    with open(rundir.file("metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"epoch"' in line]
    assert [r["epoch"] for r in rows if r.get("event") == "epoch"] == [1, 2]
    assert os.listdir(tmp_path / "run" / "checkpoints" / "dense") == ["1"]


class _FakeTrainer:
    """Adds each member's dataset (a number) to its weight once per epoch, and records
    which members trained together."""

    def __init__(self):
        self.calls = []

    def train_epoch(self, state, data, key, *, indices=None, desc="", record_presentations=False):
        self.calls.append((desc, 1))
        return state.replace(step=state.step + 1, weight=state.weight + data), _stats(), None

    def train_epoch_ensemble(self, states, data, keys, *, indices=None, desc=""):
        members = int(keys.shape[0])
        self.calls.append((desc, members))
        states = states.replace(step=states.step + 1, weight=states.weight + data)
        return states, [_stats() for _ in range(members)], None

    def stack(self, states):
        return jax.tree.map(lambda *xs: jnp.stack(xs), *states)

    stack_data = stack

    def unstack(self, stacked, member):
        return jax.tree.map(lambda x: x[member], stacked)

    def replicate(self, tree):
        return tree


def _stats():
    return EpochStats(loss=1.0, accuracy=0.5, lr=0.1, steps=1, seconds=1.0, images_per_second=1.0)


def _rundirs(tmp_path, members):
    rundirs = [runlog.RunDir(str(tmp_path / f"run{m}")) for m in range(members)]
    for rundir in rundirs:
        rundir.open({"name": "test"})
    return rundirs


def _group(trainer, rundirs, epochs):
    members = range(len(rundirs))
    return train_phase_group(
        "dense",
        trainer,
        [CountingState(step=jnp.int32(0), weight=jnp.float32(0.0)) for _ in members],
        [jnp.float32(m + 1) for m in members],
        epochs=epochs,
        shuffle_keys=[jax.random.key(m) for m in members],
        rundirs=rundirs,
        evaluate_fns=[lambda state: {"weight": float(state.weight)} for _ in members],
        eval_every=0,
    )


def test_a_group_trains_each_member_once_per_epoch_into_its_own_run_directory(tmp_path):
    trainer, rundirs = _FakeTrainer(), _rundirs(tmp_path, 3)
    states, rows = _group(trainer, rundirs, epochs=2)
    assert trainer.calls == [("dense epoch 1/2", 3), ("dense epoch 2/2", 3)]
    assert [float(s.weight) for s in states] == [2.0, 4.0, 6.0]
    assert [r["test_weight"] for r in rows] == [2.0, 4.0, 6.0]  # evaluated after the last
    for m, rundir in enumerate(rundirs):
        with open(rundir.file("metrics.jsonl")) as f:
            epochs = [json.loads(line) for line in f if '"epoch"' in line]
        assert [(r["epoch"], r["step"], r["trained_together"]) for r in epochs] == [
            (1, 1, 3),
            (2, 2, 3),
        ]
        assert sorted(os.listdir(tmp_path / f"run{m}" / "checkpoints" / "dense")) == ["1", "2"]


def test_a_member_that_resumed_ahead_waits_for_the_others(tmp_path):
    trainer, rundirs = _FakeTrainer(), _rundirs(tmp_path, 3)
    # Member 0 alone gets through two epochs of the phase (as after an interrupted run).
    train_phase(
        "dense", trainer, CountingState(step=jnp.int32(0), weight=jnp.float32(0.0)),
        jnp.float32(1.0), epochs=2, shuffle_key=jax.random.key(0), rundir=rundirs[0],
        evaluate_fn=None, eval_every=0,
    )  # fmt: skip
    trainer.calls.clear()
    states, _ = _group(trainer, rundirs, epochs=4)
    assert trainer.calls == [
        ("dense epoch 1/4", 2),
        ("dense epoch 2/4", 2),
        ("dense epoch 3/4", 3),
        ("dense epoch 4/4", 3),
    ]
    assert [float(s.weight) for s in states] == [4.0, 8.0, 12.0]  # four epochs each
    assert [int(s.step) for s in states] == [4, 4, 4]
    # One member left: trained on its own, without a member axis.
    trainer.calls.clear()
    (state,), _ = _group(trainer, rundirs[:1], epochs=5)
    assert trainer.calls == [("dense epoch 5/5", 1)] and float(state.weight) == 5.0


def test_a_group_needs_one_of_everything_per_member_and_no_epoch_fn(tmp_path):
    trainer, rundirs = _FakeTrainer(), _rundirs(tmp_path, 2)
    states = [CountingState(step=jnp.int32(0), weight=jnp.float32(0.0)) for _ in range(2)]
    common = dict(epochs=1, shuffle_keys=[jax.random.key(0)] * 2, rundirs=rundirs, eval_every=0)
    with pytest.raises(ValueError, match="one dataset, key, rundir and evaluate_fn per state"):
        train_phase_group("dense", trainer, states, [1.0], evaluate_fns=[None] * 2, **common)
    with pytest.raises(ValueError, match="2 members but 1 index sets"):
        train_phase_group(
            "dense", trainer, states, [1.0, 2.0], evaluate_fns=[None] * 2,
            indices=[jnp.arange(4)], **common,
        )  # fmt: skip
    with pytest.raises(ValueError, match="an epoch_fn trains one model"):
        train_phase_group(
            "dense", trainer, states, [1.0, 2.0], evaluate_fns=[None] * 2,
            epoch_fn=_epoch_fn([1.0]), **common,
        )  # fmt: skip
    assert trainer.calls == []
