"""Test-wide setup and shared helpers.

Four fake CPU devices for the data-parallel tests: JAX reads the device count when its
backend initializes, so this runs before any test module touches JAX. Tests that do not ask
for a mesh run on one device as usual.

`tiny_config` is the experiment the pipeline tests run: synthetic 16×16 images and the
tiny test network (`jaxbd.models.tiny`), which compiles in a fraction of a second, so a test
about the pipeline is not a test of ResNet-18's compile time (a few end-to-end tests keep
the ResNet: the smoke CLI run and the attack-learning tests).
"""

import json
import os

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 4)


def set_fields(config, overrides):
    """Applies `{"a.b.c": value}` overrides to a ConfigDict."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def tiny_config(**overrides):
    """A whole experiment in a few seconds: 256 synthetic images, the tiny network."""
    from jaxbd.configs import base_config

    c = base_config()
    c.data.name = "synthetic"
    c.data.num_train = 256
    c.data.num_test = 64
    c.data.image_size = 16
    c.attack.fraction = 0.1
    c.attack.badnets.size = 3
    c.model.name = "tiny_cnn"
    c.model.width = 8
    c.model.dtype = "float32"
    c.train.epochs = 2
    c.train.batch_size = 64
    c.train.lr = 0.05
    c.train.eval_every_epochs = 1
    c.runtime.num_devices = 1
    c.runtime.eval_batch_size = 64
    c.runtime.steps_per_call = 2
    c.runtime.progress = False
    c.prune.rounds = 0  # the pruned arm is tested on its own (test_pruned_arm)
    return set_fields(c, overrides)


def read_rows(workdir):
    """Every row of a run directory's metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
    return tiny_config


@pytest.fixture(name="read_rows")
def read_rows_fixture():
    return read_rows
