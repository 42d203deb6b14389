"""A damaged newest checkpoint does not block resuming: the phase falls back to the previous
kept one with a warning, reaches the state of an uninterrupted run, and moves the damaged
folder aside; with no usable checkpoint it stops naming the folder to move away."""

import json
import logging
import os
import shutil

import chex
import jax
import pytest

from jaxbd.data import make_synthetic
from jaxbd.models import tiny_cnn
from jaxbd.runs import CheckpointError, RunDir, RunDirError, train_phase
from jaxbd.train import CosineSchedule, Trainer, make_mesh

EPOCHS = 3


@pytest.fixture(scope="module")
def setup():
    splits = make_synthetic(num_train=64, num_test=8, image_size=8, seed=0)
    trainer = Trainer(
        tiny_cnn(width=4),
        make_mesh(1),
        batch_size=16,
        eval_batch_size=16,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        progress=False,
    )
    return trainer, trainer.put(splits.train.images, splits.train.labels)


def _phase(trainer, data, workdir):
    """The dense phase (3 epochs, the 2 newest checkpoints kept) in run directory `workdir`."""
    rundir = RunDir(workdir)
    rundir.open({"name": "test"})
    state = trainer.init_state(
        jax.random.key(0), (8, 8, 3), CosineSchedule.create(0.05, 4 * EPOCHS), rng=jax.random.key(1)
    )
    try:
        state, row, _ = train_phase(
            "dense", trainer, state, data, epochs=EPOCHS, shuffle_key=jax.random.key(2),
            rundir=rundir, evaluate_fn=None, eval_every=0,
        )  # fmt: skip
    finally:
        rundir.close()
    return state, row, rundir


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    trainer, data = setup
    workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    state, row, rundir = _phase(trainer, data, workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "dense"))) == ["2", "3"]
    return workdir, state, row, rundir.read_metrics()


def _copy(uninterrupted, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], workdir)
    return workdir


def _files(workdir, step, where):
    """The files of checkpoint `step` whose path contains `where`."""
    found = []
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "dense", str(step))):
        found += [os.path.join(root, f) for f in files if where in os.path.join(root, f)]
    assert found
    return found


def _truncate_arrays(workdir, step):
    for path in _files(workdir, step, f"{os.sep}d{os.sep}"):  # the array data files
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def _garble_meta(workdir, step):
    for path in _files(workdir, step, f"meta{os.sep}metadata"):
        with open(path, "w") as f:
            f.write('{"epoch": 3, "ro')


def _epoch_rows(rows):
    return [{k: v for k, v in r.items() if k != "seconds" and "per_second" not in k}
            for r in rows if r.get("event") == "epoch"]  # fmt: skip


@pytest.mark.parametrize("damage", [_truncate_arrays, _garble_meta])
def test_a_damaged_latest_checkpoint_resumes_from_the_previous_one(
    setup, uninterrupted, tmp_path, caplog, damage
):
    trainer, data = setup
    workdir = _copy(uninterrupted, tmp_path)
    damage(workdir, 3)
    folder = os.path.join(workdir, "checkpoints", "dense")
    with caplog.at_level(logging.WARNING):
        state, row, rundir = _phase(trainer, data, workdir)
    assert f"checkpoint {folder}{os.sep}3 cannot be restored" in caplog.text
    assert f"moved the damaged folder to {folder}.damaged{os.sep}3" in caplog.text
    # Epoch 3 was trained again from epoch 2's checkpoint: the uninterrupted final state.
    _, expected, expected_row, expected_rows = uninterrupted
    chex.assert_trees_all_equal(state.params, expected.params)
    chex.assert_trees_all_equal(state.opt_state, expected.opt_state)
    assert row["loss"] == expected_row["loss"] and row["epoch"] == EPOCHS
    rows = rundir.read_metrics()
    assert _epoch_rows(rows) == _epoch_rows(expected_rows)  # epochs 1-3, each once
    assert [r for r in rows if r["event"] == "resume"] == [
        {"event": "resume", "phase": "dense", "epoch": 2}
    ]
    # Nothing deleted: the damaged step is kept aside, and the new step 3 restores.
    assert os.listdir(folder + ".damaged") == ["3"]
    assert sorted(os.listdir(folder)) == ["2", "3"]
    again, _, _ = _phase(trainer, data, workdir)
    chex.assert_trees_all_equal(again.params, expected.params)


def test_no_usable_checkpoint_stops_naming_the_folder_to_move_away(setup, uninterrupted, tmp_path):
    trainer, data = setup
    workdir = _copy(uninterrupted, tmp_path)
    _truncate_arrays(workdir, 3)
    _garble_meta(workdir, 2)
    folder = os.path.join(workdir, "checkpoints", "dense")
    before = {root: sorted(files) for root, _, files in os.walk(folder)}
    with pytest.raises(CheckpointError, match=rf"no checkpoint in {folder} can be restored") as e:
        _phase(trainer, data, workdir)
    assert isinstance(e.value, RunDirError)  # the CLI's exit 2
    assert f"move {folder} away" in str(e.value) and "\n" not in str(e.value)
    assert {root: sorted(files) for root, _, files in os.walk(folder)} == before  # untouched
    # Moved away as told, the phase trains from its start to the same state.
    shutil.move(folder, str(tmp_path / "inspect"))
    state, _, rundir = _phase(trainer, data, workdir)
    chex.assert_trees_all_equal(state.params, uninterrupted[1].params)
    assert _epoch_rows(rundir.read_metrics()) == _epoch_rows(uninterrupted[3])


def test_metadata_of_another_epoch_is_damage_too(setup, uninterrupted, tmp_path, caplog):
    trainer, data = setup
    workdir = _copy(uninterrupted, tmp_path)
    (path,) = _files(workdir, 3, f"meta{os.sep}metadata")
    with open(path) as f:
        meta = json.load(f)
    with open(path, "w") as f:
        json.dump({**meta, "epoch": 7}, f)
    with caplog.at_level(logging.WARNING):
        state, _, _ = _phase(trainer, data, workdir)
    assert "does not hold epoch 3" in caplog.text
    chex.assert_trees_all_equal(state.params, uninterrupted[1].params)
