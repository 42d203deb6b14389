"""Test-wide setup and shared helpers.

Four fake CPU devices for the data-parallel tests: JAX reads the device count when its
backend initializes, so this runs before any test module touches JAX. Tests that do not ask
for a mesh run on one device as usual.

`tiny_config` is the experiment the pipeline tests run: synthetic 16×16 images and the
tiny test network (`jaxbd.models.tiny`), which compiles in a fraction of a second, so a test
about the pipeline is not a test of ResNet-18's compile time (a few end-to-end tests keep
the ResNet: the smoke CLI run and the attack-learning tests). `tiny_repair_context` is the
repair context the pruning-defense tests plan on: 80 synthetic 8×8 images, 4 per class for
the defender (half held out), a one-device trainer with the repair's optimizer.
"""

import json
import os

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 4)


def tiny_repair_context(repair, model, *, mean, std, key=0, trigger=None, validate=None):
    """A `RepairContext` on 80 synthetic 8×8 images (4 clean defender images per class),
    with `repair`'s batch size, momentum and weight decay, validating on the held-out part
    unless `validate` is given; `trigger` as `RepairContext.trigger`."""
    import jax.numpy as jnp
    import numpy as np

    from jaxbd.data import make_synthetic
    from jaxbd.defenses import RepairContext
    from jaxbd.defenses.defender_data import DefenderDataSettings, defender_data
    from jaxbd.train import Trainer, make_mesh

    train = make_synthetic(num_train=80, num_test=8, image_size=8, seed=0).train
    defender = defender_data(
        jax.random.key(7), train, np.zeros(len(train), bool), DefenderDataSettings(per_class=4)
    )
    trainer = Trainer(
        model,
        make_mesh(1),
        batch_size=repair.batch_size,
        eval_batch_size=16,
        momentum=repair.momentum,
        weight_decay=repair.weight_decay,
        mean=mean,
        std=std,
        steps_per_call=1,
        progress=False,
    )
    val = defender.val

    def val_accuracy(params, batch_stats):
        logits, _ = trainer.predict_variables(params, batch_stats, val.images)
        return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == val.labels))

    return RepairContext(
        trainer=trainer,
        defender=defender,
        tune_data=trainer.put(defender.tune.images, defender.tune.labels),
        key=jax.random.key(key),
        validate=validate or val_accuracy,
        num_classes=train.num_classes,
        trigger=trigger,
    )


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
