"""Starting the multi-controller runtime, and what one process sees of it: the settings'
checks, the start-up decisions, and the messages that name the global device count (runs of
two real processes: `test_multiprocess.py`)."""

import json

import jax
import numpy as np
import pytest

from jaxbd import cli
from jaxbd.pipeline.stages import engine
from jaxbd.settings import ConfigError, from_config
from jaxbd.train import EpochProgress, distributed, make_mesh, put, replicated
from jaxbd.train.settings import RuntimeSettings


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"distributed": "maybe"}, "distributed: must be one of ['auto', 'off', 'on']"),
        ({"coordinator_address": "localhost"}, 'coordinator_address: must be None or "host:port"'),
        ({"num_processes": 0}, "num_processes: must be None or >= 1, got 0"),
        ({"num_processes": 2, "process_id": 2}, "process_id: must be None or in [0, num_proc"),
        ({"process_id": -1}, "process_id: must be None or >= 0, got -1"),
        ({"distributed": "off", "num_processes": 2}, "is 'off' but coordinator_address, num_"),
    ],
)
def test_runtime_settings_refuse_what_cannot_start(fields, message):
    with pytest.raises(ConfigError, match=r"^config\.runtime\.") as error:
        from_config(RuntimeSettings, fields, "config.runtime")
    assert message in str(error.value)


def test_one_process_starts_nothing(monkeypatch):
    for variable in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv(distributed.ENV_PROCESS_ID, raising=False)
    assert distributed.initialize("off") is False
    # JAX already runs here (as one process): "auto" without explicit values is one process.
    jax.devices()
    assert distributed.initialize("auto") is False
    assert not jax.distributed.is_initialized()
    # Asked for explicitly, it is an error that says why.
    with pytest.raises(ConfigError, match=r"distributed=on: the JAX backend started before"):
        distributed.initialize("on")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ConfigError, match=r"num_processes: \$JAX_NUM_PROCESSES must be an int"):
        distributed.initialize("auto")
    assert distributed.process_count() == 1 and distributed.is_writer()
    assert distributed.broadcast_text("resumed") == "resumed"
    distributed.sync("nothing to wait for")


def test_with_several_processes_the_batch_message_names_the_global_device_count(monkeypatch):
    mesh = make_mesh(4)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ConfigError) as error:
        engine._check_batch_size(mesh, "config.train.batch_size", 30)
    assert str(error.value) == (
        "config.train.batch_size: the global batch must be a multiple of the global device "
        "count (4: 2 processes × 2 devices), got 30; use e.g. --config.train.batch_size=28"
    )
    with pytest.raises(ConfigError, match=r"with 2 processes the mesh spans all 4 devices"):
        engine._mesh(2)


def test_other_processes_print_only_errors_of_their_own(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_process", lambda: (1, 2))
    with pytest.raises(SystemExit) as code:
        cli._exit_with("config.train.epochs: must be >= 1, got 0", shared=True)
    assert code.value.code == 2 and capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        cli._exit_with("CIFAR-10 path /data does not exist")
    assert capsys.readouterr().err == "error: process 1 of 2: CIFAR-10 path /data does not exist\n"
    monkeypatch.setattr(cli, "_process", lambda: (0, 2))
    with pytest.raises(SystemExit):
        cli._exit_with("config.train.epochs: must be >= 1, got 0", shared=True)
    assert capsys.readouterr().err == "error: config.train.epochs: must be >= 1, got 0\n"


def test_put_with_one_process_is_device_put_and_keeps_typed_keys():
    mesh = make_mesh(4)
    tree = {"x": np.arange(8.0, dtype=np.float32), "key": jax.random.key(3)}
    placed = put(tree, replicated(mesh))
    assert placed["x"].sharding == replicated(mesh)
    assert jax.random.key_data(placed["key"]).tolist() == jax.random.key_data(tree["key"]).tolist()


def test_an_epochs_done_part_survives_json_exactly():
    values = np.asarray([2.3025851, 1e-8, 0.1], np.float32)
    progress = EpochProgress(3, tuple(float(v) for v in values), 57, {"ce": (0.5,)}, 0.05)
    again = EpochProgress.from_json(json.loads(json.dumps(progress.to_json())))
    assert again == progress
    assert np.array_equal(np.asarray(again.losses, np.float32), values)


def test_the_command_line_reports_a_runtime_that_cannot_start_in_one_line(capsys):
    from jaxbd.configs import base_config

    config = base_config()
    config.runtime.distributed = "maybe"
    with pytest.raises(SystemExit) as code:
        cli.start_runtime(config)
    assert code.value.code == 2
    assert capsys.readouterr().err == (
        "error: config.runtime.distributed: must be one of ['auto', 'off', 'on'], got 'maybe'\n"
    )
    config.runtime.distributed = "off"
    assert cli.start_runtime(config).distributed == "off"
