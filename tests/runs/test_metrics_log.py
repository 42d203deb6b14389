"""metrics.jsonl is a faithful record: each epoch once however a run was killed, a torn last
line repaired, events logged once."""

import json
import logging
import os

import flax.struct
import jax
import jax.numpy as jnp
import pytest

from jaxbd.runs import RunDir, train_phase
from jaxbd.runs.checkpoint import Checkpointer
from jaxbd.train import EpochStats


@flax.struct.dataclass
class CountingState:
    step: jax.Array
    weight: jax.Array


def _epoch(state, data, key, *, indices=None, desc="", record_presentations=False):
    """One step that adds 1 to the weight; the loss says which epoch it was."""
    state = state.replace(step=state.step + 1, weight=state.weight + 1.0)
    loss = float(state.step)
    return state, EpochStats(loss, 0.5, 0.1, 1, 1.0, 1.0), None


def _phase(rundir, epochs=3):
    state = CountingState(step=jnp.int32(0), weight=jnp.float32(0.0))
    return train_phase(
        "dense", None, state, None, epochs=epochs, shuffle_key=jax.random.key(0),
        rundir=rundir, evaluate_fn=lambda s: {"weight": float(s.weight)}, eval_every=1,
        epoch_fn=_epoch,
    )  # fmt: skip


def _lines(rundir):
    with open(rundir.file("metrics.jsonl")) as f:
        return f.read().splitlines(keepends=True)


def _epochs(rundir):
    rows = [json.loads(line) for line in _lines(rundir)]  # valid JSONL, every line
    return [(r["epoch"], r["test_weight"]) for r in rows if r.get("event") == "epoch"]


@pytest.mark.parametrize("killed_after", [1, 2])
def test_a_kill_between_the_row_and_its_checkpoint_leaves_each_epoch_once(
    tmp_path, monkeypatch, caplog, killed_after
):
    rundir = RunDir(str(tmp_path / "run"))
    rundir.open({"name": "test"})
    real_save = Checkpointer.save

    def killed(self, step, state, meta):
        if step == killed_after + 1:  # the row of this epoch is already logged
            raise KeyboardInterrupt
        real_save(self, step, state, meta)

    monkeypatch.setattr(Checkpointer, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        _phase(rundir)
    assert _epochs(rundir)[-1][0] == killed_after + 1  # the row without a checkpoint
    monkeypatch.setattr(Checkpointer, "save", real_save)
    rundir.close()

    rundir = RunDir(str(tmp_path / "run"))
    assert rundir.open({"name": "test"}) is True
    with caplog.at_level(logging.WARNING):
        state, row, _ = _phase(rundir)
    assert f"dropped the log rows of epoch(s) [{killed_after + 1}]" in caplog.text
    assert _epochs(rundir) == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert float(state.weight) == 3.0 and row["epoch"] == 3
    resumes = [r for r in rundir.read_metrics() if r["event"] == "resume"]
    assert resumes == [{"event": "resume", "phase": "dense", "epoch": killed_after}]
    # Resuming a finished phase trains and logs nothing more.
    _phase(rundir)
    assert _epochs(rundir) == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_a_kill_before_the_first_checkpoint_drops_that_row_too(tmp_path, monkeypatch):
    rundir = RunDir(str(tmp_path / "run"))
    rundir.open({"name": "test"})

    def killed(self, step, state, meta):
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        _phase(rundir)
    monkeypatch.undo()
    _phase(rundir)
    assert _epochs(rundir) == [(1, 1.0), (2, 2.0), (3, 3.0)]
    # Only this phase's later epochs are dropped: other phases' rows and events stay.
    rundir.log({"event": "epoch", "phase": "other", "epoch": 9})
    _phase(rundir, epochs=4)
    assert [r.get("phase") for r in rundir.read_metrics() if r["event"] == "epoch"] == [
        "dense", "dense", "dense", "other", "dense",
    ]  # fmt: skip


def test_a_torn_last_line_is_repaired_on_open(tmp_path, caplog):
    rundir = RunDir(str(tmp_path / "run"))
    rundir.open({"name": "test"})
    rundir.log({"event": "start"})
    rundir.log({"event": "epoch", "phase": "dense", "epoch": 1})
    rundir.close()
    with open(rundir.file("metrics.jsonl"), "a") as f:
        f.write('{"event": "epoch", "phase": "den')  # killed mid-write
    mode = os.stat(rundir.file("metrics.jsonl")).st_mode
    # Reading never fails on a torn tail.
    assert [r["event"] for r in rundir.read_metrics()] == ["start", "epoch"]
    with caplog.at_level(logging.WARNING):
        assert RunDir(rundir.path).open({"name": "test"}) is True
    assert "removed a torn last line" in caplog.text
    rundir.log({"event": "epoch", "phase": "dense", "epoch": 2})
    assert [json.loads(line)["event"] for line in _lines(rundir)] == ["start", "epoch", "epoch"]
    assert os.stat(rundir.file("metrics.jsonl")).st_mode == mode
    assert not [n for n in os.listdir(rundir.path) if n.startswith(".tmp-")]


def test_a_complete_last_row_missing_only_its_newline_is_kept(tmp_path):
    rundir = RunDir(str(tmp_path / "run"))
    rundir.open({"name": "test"})
    rundir.close()
    with open(rundir.file("metrics.jsonl"), "w") as f:
        f.write('{"event": "start"}')
    rundir.open({"name": "test"})
    rundir.log({"event": "end"})
    assert _lines(rundir) == ['{"event": "start"}\n', '{"event": "end"}\n']


def test_read_metrics_leaves_out_a_garbled_line_with_a_warning(tmp_path, caplog):
    rundir = RunDir(str(tmp_path / "run"))
    os.makedirs(rundir.path)
    with open(rundir.file("metrics.jsonl"), "w") as f:
        f.write('{"event": "a"}\n{"event": "b"}{"eve\n{"event": "c"}\n')
    with caplog.at_level(logging.WARNING):
        assert [r["event"] for r in rundir.read_metrics()] == ["a", "c"]
    assert "line(s) 2 are not JSON objects" in caplog.text
    # Rewrites keep what they cannot read.
    assert rundir.drop_rows(lambda r: r["event"] == "c") == [{"event": "c"}]
    assert _lines(rundir) == ['{"event": "a"}\n', '{"event": "b"}{"eve\n']


def test_log_once_is_idempotent_across_resumes(tmp_path):
    rundir = RunDir(str(tmp_path / "run"))
    rundir.open({"name": "test"})
    key = ("event", "round")
    assert rundir.log_once({"event": "imp_round", "round": 1, "sparsity": 0.2}, key=key)
    assert not rundir.log_once({"event": "imp_round", "round": 1, "sparsity": 0.2}, key=key)
    rundir.close()
    rundir = RunDir(rundir.path)
    rundir.open({"name": "test"})
    # The identifying fields decide, not the rest (a replayed round's float may differ).
    assert not rundir.log_once({"event": "imp_round", "round": 1, "sparsity": 0.3}, key=key)
    assert rundir.log_once({"event": "imp_round", "round": 2, "sparsity": 0.36}, key=key)
    assert [(r["round"], r["sparsity"]) for r in rundir.read_metrics()] == [(1, 0.2), (2, 0.36)]
    with pytest.raises(ValueError, match=r"key fields \['round'\] are not in the row"):
        rundir.log_once({"event": "imp_round"}, key=key)
