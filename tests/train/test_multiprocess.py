"""Several processes, one run: `scripts/train.py` as 2 processes × 2 CPU devices
(`jax.distributed` over gloo, on this machine) against 1 process × 4 devices, and a SIGTERM
that reaches one of the two processes.

The command-line runs go through `mp_worker.py`, which records the files each process
writes and can send a process a real SIGTERM after its n-th train call:

Every test here is slow (`.ci/run` runs them all):

- "two" (module fixture): 2 × 2, uninterrupted, while this pytest process trains
  "reference", the same experiment on its 4 CPU devices;
- "two_stopped" (slow; `.ci/run` runs it): 2 × 2, process 1 alone gets SIGTERM after its
  9th train call (the first of epoch 2, of 8-step epochs), then "two_resumed", the same
  command again;
- "bad" (slow, `.ci/run`): 2 × 2 with a batch that does not split over the 4 devices.

The tiny network (`tiny_cnn`, 16×16 synthetic images) keeps each process to a few seconds,
most of it starting JAX. One process's SIGTERM, its exact mid-epoch step and the command
line's message are tested without subprocesses in `tests/runs/test_preemption.py`.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxbd.pipeline import experiment
from jaxbd.pipeline.stages import engine
from jaxbd.runs.checkpoint import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(REPO, "tests", "train", "mp_worker.py")
SMOKE = os.path.join(REPO, "configs", "smoke.py")

EPOCHS = 3
STEPS_PER_EPOCH = 8  # 256 images, batch 32
TINY = {
    "data.num_train": 256,
    "data.num_test": 64,
    "data.image_size": 16,
    "attack.fraction": 0.1,
    "attack.badnets.size": 3,
    "model.name": "tiny_cnn",
    "train.epochs": EPOCHS,
    "train.batch_size": 32,
    "train.eval_every_epochs": 1,
    "prune.rounds": 0,
    "runtime.eval_batch_size": 64,
    "runtime.steps_per_call": 1,
    "runtime.progress": False,
}
"""configs/smoke.py at the scale of the pipeline tests (`tiny_config`)."""

METRICS = ("clean_accuracy", "attack_success_rate", "asr_all_images", "robust_accuracy")
PARAM_TOLERANCE = 1e-5
"""Largest |difference| allowed between a parameter trained by 2 × 2 and by 1 × 4 devices
after 12 steps: the same computation, but gradients and BatchNorm statistics are summed in
another order across processes (measured: about 1e-7; as large as between 1, 2 and 4 devices
of one process)."""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp, name, workdir, *, processes, devices, sigterm=None, flags=()):
    """Starts the command-line run `name` (one worker per process); returns its handles."""
    port = _free_port()
    tiny = [f"--config.{k}={v}" for k, v in TINY.items()]
    flags = [f"--config={SMOKE}", f"--workdir={workdir}", *tiny, *flags]  # later ones win
    if processes > 1:
        flags += [
            f"--config.runtime.coordinator_address=127.0.0.1:{port}",
            f"--config.runtime.num_processes={processes}",
        ]
    handles = []
    for i in range(processes):
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
        env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
        env.pop("JAXBD_TEST_SIGTERM_AFTER", None)
        env.pop("JAXBD_TEST_SLOW_AFTER", None)
        if sigterm is not None:
            env["JAXBD_TEST_SLOW_AFTER"] = str(sigterm[1])  # see mp_worker.py
            if sigterm[0] == i:
                env["JAXBD_TEST_SIGTERM_AFTER"] = str(sigterm[1])
        own = [f"--config.runtime.process_id={i}"] if processes > 1 else []
        report = os.path.join(tmp, f"{name}.written{i}.json")
        handles.append(
            (
                report,
                subprocess.Popen(
                    [sys.executable, WORKER, report, *flags, *own],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    return handles


def _wait(handles, timeout=240):
    """[(exit status, stderr, [event, path] written outside checkpoints/, pid)] per process."""
    results = []
    for report, proc in handles:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for _, p in handles:
                p.kill()
            raise
        written = None
        if os.path.exists(report):
            with open(report) as f:
                written = json.load(f)
        results.append((proc.returncode, err, written, proc.pid))
    return results


def _config(num_devices=None):
    import runpy

    from conftest import set_fields

    config = runpy.run_path(SMOKE)["get_config"]()
    set_fields(config, TINY)
    config.runtime.num_devices = num_devices
    return config


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _summary(workdir):
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


def _final_params(workdir):
    """The dense arm's parameters after its last epoch, as NumPy arrays."""
    settings = experiment.validate_config(_config(num_devices=4))
    trainer = engine.make_trainer(settings, 10)
    schedule = settings.train.schedule(EPOCHS, STEPS_PER_EPOCH)
    template = trainer.init_state(jax.random.key(0), (16, 16, 3), schedule, rng=jax.random.key(0))
    with Checkpointer(os.path.join(workdir, "checkpoints", "dense")) as checkpoints:
        restored, _ = checkpoints.restore(EPOCHS, {"state": template})
    return jax.tree.map(np.asarray, jax.device_get(restored["state"].params))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("multiprocess"))
    dirs = {n: os.path.join(tmp, n) for n in ("two", "reference")}
    launched = _launch(tmp, "two", dirs["two"], processes=2, devices=2)
    experiment.run(_config(num_devices=4), dirs["reference"])
    return tmp, dirs, {"two": _wait(launched)}


@pytest.mark.slow  # the 2-process run, about a minute on 2 cores; .ci/run runs it
def test_two_processes_give_the_parameters_of_one_with_four_devices(runs):
    _, dirs, results = runs
    assert [r[0] for r in results["two"]] == [0, 0], results["two"]
    two, reference = _final_params(dirs["two"]), _final_params(dirs["reference"])
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), two, reference))
    print(f"largest parameter difference, 2 × 2 against 1 × 4 devices: {max(diffs):.3g}")
    assert max(diffs) <= PARAM_TOLERANCE, max(diffs)
    s2, s1 = _summary(dirs["two"]), _summary(dirs["reference"])
    assert (s2["processes"], s2["devices"], s1["processes"], s1["devices"]) == (2, 4, 1, 4)
    for key in METRICS:  # 64 test images: a changed prediction moves a metric by >= 1/64
        assert abs(s2[key] - s1[key]) < 1 / 64, (key, s2[key], s1[key])


@pytest.mark.slow  # .ci/run runs it
def test_only_process_zero_writes_the_run_files(runs):
    _, dirs, results = runs
    (_, _, written0, pid0), (_, _, written1, _) = results["two"]
    assert written1 == []
    names = {os.path.basename(path) for _, path in written0}
    assert {"config.json", "metrics.jsonl", "summary.json", ".lock"} <= names, names
    with open(os.path.join(dirs["two"], ".lock")) as f:  # process 0 held the lock
        assert f.read().split() == [str(pid0)]
    # One writer, so one copy of each event: the rows of the 2-process run are the rows of
    # the 1-process reference, event for event.
    events = [(r["event"], r.get("epoch")) for r in _rows(dirs["two"])]
    assert events == [(r["event"], r.get("epoch")) for r in _rows(dirs["reference"])]
    assert sorted(os.listdir(dirs["two"])) == sorted(os.listdir(dirs["reference"]))


@pytest.mark.slow  # one more 2-process run; .ci/run runs it
def test_a_batch_that_does_not_split_over_every_process_is_one_line_from_process_0(runs):
    tmp, _, _ = runs
    workdir = os.path.join(tmp, "bad")
    bad = ["--config.train.batch_size=30"]
    results = _launch(tmp, "bad", workdir, processes=2, devices=2, flags=bad)
    (rc0, err0, _, _), (rc1, err1, written1, _) = _wait(results)
    assert (rc0, rc1) == (2, 2)
    assert err0.strip().splitlines()[-1] == (
        "error: config.train.batch_size: the global batch must be a multiple of the global "
        "device count (4: 2 processes × 2 devices), got 30; use e.g. "
        "--config.train.batch_size=28"
    )
    assert "error" not in err1 and written1 == []
    assert not os.path.exists(workdir)  # refused before anything was written


@pytest.mark.slow  # two more 2-process runs, about 40 s; .ci/run runs it
def test_sigterm_on_one_process_stops_both_at_one_step_and_the_resumed_run_is_exact(runs):
    tmp, dirs, _ = runs
    workdir = os.path.join(tmp, "two_stopped")
    stop = _wait(_launch(tmp, "two_stopped", workdir, processes=2, devices=2, sigterm=(1, 9)))
    again = _wait(_launch(tmp, "two_resumed", workdir, processes=2, devices=2))
    # Both processes stopped at the step they agreed on (JAX's preemption sync point) and
    # exited 143; process 0 said where and how to resume, process 1 (which got the SIGTERM)
    # said nothing.
    assert [r[0] for r in stop] == [143, 143], stop
    message = stop[0][1]
    assert "preempted: stopped at a preemption request (SIGTERM) in phase 'dense'" in message
    assert "resume with the same command:" in message and "--workdir" in message
    assert "preempted" not in stop[1][1]
    assert [r[0] for r in again] == [0, 0], again
    assert stop[1][2] == [] and again[1][2] == []  # process 1 wrote none of the run's files

    rows = _rows(workdir)
    (preempted,) = [r for r in rows if r["event"] == "preempted"]
    # The agreement takes a moment (here about a second: 1–3 slowed calls), still inside
    # epoch 2.
    assert preempted["epoch"] == 2 and 0 < preempted["step_in_epoch"] < STEPS_PER_EPOCH
    (resume,) = [r for r in rows if r["event"] == "resume"]
    assert (resume["epoch"], resume["step_in_epoch"]) == (1, preempted["step_in_epoch"])
    # No finished step trained twice, none lost: each epoch once, with the step count and
    # the statistics of the uninterrupted run, and the same final parameters, bit for bit.
    epochs = [r for r in rows if r["event"] == "epoch"]
    expected = [r for r in _rows(dirs["two"]) if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    for got, want in zip(epochs, expected, strict=True):
        for key in ("step", "loss", "accuracy", "lr", "test_clean_accuracy"):
            assert got[key] == want[key], (key, got, want)
    same = jax.tree.map(np.array_equal, _final_params(workdir), _final_params(dirs["two"]))
    assert all(jax.tree.leaves(same))
    s, u = _summary(workdir), _summary(dirs["two"])
    for key in (*METRICS, "final_train_loss", "final_train_accuracy"):
        assert s[key] == u[key], key
    # The mid-epoch checkpoint and its folder were deleted once its epoch's own checkpoint existed.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["dense"]
