"""The phase loop's guard against a diverged run (the rest of `train_phase` is exercised by
the experiment and selection-pipeline tests)."""

import json
import os

import flax.struct
import jax
import jax.numpy as jnp
import pytest

from jaxbd import logging as runlog
from jaxbd.phase import TrainingDivergedError, train_phase
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
