"""The main command: end to end at toy scale, its log, and its errors (exit status 2, clear
message; `tests/test_errors.py` has the rest)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.data.num_train=256",
    "--config.data.num_test=64",
    "--config.data.image_size=16",
    "--config.attack.badnets.size=3",
    "--config.model.width=4",
    "--config.train.epochs=1",
    "--config.train.batch_size=64",
    "--config.runtime.eval_batch_size=64",
    "--config.runtime.progress=False",
]


def train(workdir, *extra):
    command = [
        sys.executable,
        os.path.join(REPO, "scripts", "train.py"),
        "--config",
        os.path.join(REPO, "configs", "smoke.py"),
        "--workdir",
        str(workdir),
        *TINY,
        *extra,
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)


@pytest.mark.slow  # the ResNet smoke CLI, twice in subprocesses; .ci/run runs it
def test_smoke_config_end_to_end_then_refuses_to_overwrite(tmp_path):
    workdir = tmp_path / "run"
    # The pruned arm through this command is the CI smoke run's (.ci/run); here it is off.
    first = train(workdir, "--config.prune.rounds=0")
    assert first.returncode == 0, first.stderr[-3000:]
    # A log a person can read: jaxbd's own messages, none of orbax's internals.
    assert orbax_lines(first.stderr) == 0, first.stderr[-3000:]
    assert "dense epoch 1/1" in first.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["num_train"] == 256 and summary["data_source"].startswith("synthetic")
    assert (workdir / "config.json").exists() and (workdir / "metrics.jsonl").exists()

    second = train(workdir, "--config.prune.rounds=0")
    assert second.returncode == 2
    assert "finished run" in second.stderr and "never overwritten" in second.stderr
    assert json.loads((workdir / "summary.json").read_text()) == summary


def orbax_lines(stderr):
    return sum("orbax" in line for line in stderr.splitlines())


@pytest.mark.slow  # a CLI run in a subprocess; .ci/run runs it
def test_verbosity_brings_library_logs_back(tmp_path):
    # The tiny network: this is about logging, not the ResNet (the smoke test trains that).
    result = train(
        tmp_path / "run", "--config.prune.rounds=0", "--config.model.name=tiny_cnn", "--verbosity=1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert orbax_lines(result.stderr) > 0
    assert "dense epoch 1/1" in result.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.train.epochs=0", "config.train.epochs"),
        ("--config.model.dtype=float16", "config.model.dtype"),
        ("--config.data.name=cifar10", "does not exist"),
    ],
)
def test_bad_input_exits_with_a_clear_message(tmp_path, override, message):
    extra = [override]
    if "cifar10" in override:
        extra.append(f"--config.data.path={tmp_path / 'missing'}")
    result = train(tmp_path / "run", *extra)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert not (tmp_path / "run").exists()  # nothing was written for a rejected run
