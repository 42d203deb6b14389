"""SIGTERM in one process: training stops after the current call, saves the state mid-epoch
with the epoch's done part, and the command line exits 143 with the command that resumes;
the resumed run is the uninterrupted one, bit for bit. (Two processes agreeing on the step:
`tests/train/test_multiprocess.py`.)"""

import itertools
import json
import os
import signal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jaxbd import cli
from jaxbd.pipeline import experiment
from jaxbd.pipeline.stages import engine
from jaxbd.runs import RunDir, train_phase
from jaxbd.runs.checkpoint import Checkpointer
from jaxbd.train import EpochStats, preemption
from jaxbd.train import trainer as trainer_lib

CALLS_PER_EPOCH = 2  # tiny_config: 256 images, batch 64, 2 steps per call
STEPS_PER_EPOCH = 4


def _sigterm_after(monkeypatch, calls):
    """Sends this process a real SIGTERM right after its `calls`-th jitted train call."""
    original = trainer_lib.Trainer.compiled_steps
    count = itertools.count(1)

    def compiled_steps(self, *args, **kwargs):
        fn = original(self, *args, **kwargs)

        def counted(*a, **k):
            out = fn(*a, **k)
            if next(count) == calls:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        return counted

    monkeypatch.setattr(trainer_lib.Trainer, "compiled_steps", compiled_steps)


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _params(workdir, config, epoch):
    settings = experiment.validate_config(config)
    trainer = engine.make_trainer(settings, 10)
    schedule = settings.train.schedule(settings.train.epochs, STEPS_PER_EPOCH)
    template = trainer.init_state(jax.random.key(0), (16, 16, 3), schedule, rng=jax.random.key(0))
    with Checkpointer(os.path.join(workdir, "checkpoints", "dense")) as checkpoints:
        restored, _ = checkpoints.restore(epoch, {"state": template})
    return jax.device_get(restored["state"].params)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    return workdir, experiment.run(tiny_config(), workdir)


def test_sigterm_mid_epoch_saves_exits_143_and_the_resumed_run_is_exact(
    tmp_path, capsys, monkeypatch, reference
):
    workdir = str(tmp_path / "run")
    _sigterm_after(monkeypatch, CALLS_PER_EPOCH + 1)  # after step 2 of epoch 2's 4
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        cli.run_or_exit(
            lambda: experiment.run(tiny_config(), workdir),
            on_interrupt="",
            workdir=workdir,
            preemptible=True,
        )
    assert stopped.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is removed again
    err = capsys.readouterr().err
    assert (
        "preempted: stopped at a preemption request (SIGTERM) in phase 'dense', epoch 2/2, "
        "after step 2 of 4; saved " + os.path.join(workdir, "checkpoints", "dense.mid_epoch", "6")
    ) in err
    assert "resume with the same command:\n  " in err
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
    (preempted,) = [r for r in _rows(workdir) if r["event"] == "preempted"]
    assert preempted == {
        "event": "preempted",
        "phase": "dense",
        "epoch": 2,
        "step_in_epoch": 2,
        "step": 6,
    }

    monkeypatch.undo()
    summary = experiment.run(tiny_config(), workdir)  # the same command again
    ref_dir, ref = reference
    rows = _rows(workdir)
    assert [r for r in rows if r["event"] == "resume"] == [
        {"event": "resume", "phase": "dense", "epoch": 1, "step_in_epoch": 2}
    ]
    # Each epoch once, with the uninterrupted run's step count and statistics: no step
    # was trained twice or lost, and the done part's losses were carried exactly.
    epochs = [r for r in rows if r["event"] == "epoch"]
    expected = [r for r in _rows(ref_dir) if r["event"] == "epoch"]
    assert len(epochs) == len(expected) == 2
    for got, want in zip(epochs, expected, strict=True):
        for key in ("epoch", "step", "loss", "accuracy", "lr", "test_clean_accuracy"):
            assert got[key] == want[key], (key, got, want)
    for key in (
        "clean_accuracy",
        "attack_success_rate",
        "robust_accuracy",
        "final_train_loss",
        "final_train_accuracy",
    ):
        assert summary[key] == ref[key], key
    same = jax.tree.map(
        np.array_equal, _params(workdir, tiny_config(), 2), _params(ref_dir, tiny_config(), 2)
    )
    assert all(jax.tree.leaves(same))
    # The mid-epoch checkpoint and its folder were deleted once epoch 2's own checkpoint existed.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["dense"]


def test_a_phase_that_is_never_stopped_leaves_no_mid_epoch_folder(reference):
    ref_dir, _ = reference
    assert sorted(os.listdir(os.path.join(ref_dir, "checkpoints"))) == ["dense"]


@flax.struct.dataclass
class CountingState:
    step: jax.Array
    weight: jax.Array


def _epoch(state, data, key, *, indices=None, desc="", record_presentations=False):
    """An epoch of its own (one step adding 1): no mid-epoch stop, only at its end."""
    if int(state.step) == 1:
        preemption.request_stop()  # a SIGTERM during epoch 2
    state = state.replace(step=state.step + 1, weight=state.weight + 1.0)
    return state, EpochStats(float(state.step), 0.5, 0.1, 1, 1.0, 1.0), None


def test_a_phase_with_its_own_epoch_stops_at_the_end_of_the_epoch(tmp_path):
    rundir = RunDir(str(tmp_path / "run"))
    rundir.open({"name": "test"})

    def phase():
        state = CountingState(step=jnp.int32(0), weight=jnp.float32(0.0))
        return train_phase(
            "dense", None, state, None, epochs=4, shuffle_key=jax.random.key(0),
            rundir=rundir, evaluate_fn=None, eval_every=0, epoch_fn=_epoch,
        )  # fmt: skip

    try:
        with pytest.raises(preemption.Preempted, match=r"after epoch 2/4 of phase 'dense'"):
            phase()
    finally:
        preemption.clear()
    state, row, _ = phase()  # resumes after the saved epoch 2
    assert (int(state.step), float(state.weight), row["epoch"]) == (4, 4.0, 4)
    epochs = [r["epoch"] for r in rundir.read_metrics() if r.get("event") == "epoch"]
    assert epochs == [1, 2, 3, 4]


def test_without_the_handler_a_stop_is_never_requested():
    assert not preemption.armed() and not preemption.stop_requested()
    with preemption.catch_sigterm():
        assert preemption.armed() and not preemption.stop_requested()
        os.kill(os.getpid(), signal.SIGTERM)  # caught: a request, not the end
        assert preemption.stop_requested()
    assert not preemption.stop_requested()  # forgotten when the block ends
