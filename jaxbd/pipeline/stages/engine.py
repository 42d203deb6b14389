"""The engine of an experiment: one `Trainer` per model, mesh and optimizer, reused.

A `Trainer` owns compiled functions; runs in one process that share the model, mesh and
optimizer settings (the methods and seeds of a sweep, the tests, a defense of a trained
model) reuse one instead of compiling the same steps again.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh

from jaxbd.pipeline.stages.experiment_settings import ExperimentSettings
from jaxbd.settings import ConfigError
from jaxbd.train import Trainer, make_mesh

_TRAINERS: dict[tuple, Trainer] = {}


def make_trainer(settings: ExperimentSettings, num_classes: int) -> Trainer:
    """The engine for these settings: built once per distinct model/mesh/optimizer, then
    reused (only the progress-bar flag is updated per run).

    Raises:
        ConfigError: naming the field, if a batch size is not a multiple of the device
            count, or more devices are asked for than exist.
    """
    s, t, r = settings, settings.train, settings.runtime
    mesh = _mesh(r.num_devices)
    _check_batch_size(mesh, "config.train.batch_size", t.batch_size)
    _check_batch_size(mesh, "config.runtime.eval_batch_size", r.eval_batch_size)
    key = (
        s.model,
        num_classes,
        tuple(d.id for d in mesh.devices.flat),
        t.batch_size,
        r.eval_batch_size,
        t.momentum,
        t.weight_decay,
        tuple(s.data.mean),
        tuple(s.data.std),
        t.crop_padding,
        t.flip,
        r.steps_per_call,
    )
    if key not in _TRAINERS:
        _TRAINERS[key] = Trainer(
            s.model.build(num_classes),
            mesh,
            batch_size=t.batch_size,
            eval_batch_size=r.eval_batch_size,
            momentum=t.momentum,
            weight_decay=t.weight_decay,
            mean=tuple(s.data.mean),
            std=tuple(s.data.std),
            crop_padding=t.crop_padding,
            flip=t.flip,
            steps_per_call=r.steps_per_call,
        )
    trainer = _TRAINERS[key]
    trainer.progress = r.progress
    return trainer


def _mesh(num_devices: int | None) -> Mesh:
    """The data-parallel mesh, or a `ConfigError` naming `config.runtime.num_devices`."""
    available = jax.devices()
    if jax.process_count() > 1 and num_devices not in (None, len(available)):
        raise ConfigError(
            f"config.runtime.num_devices: with {jax.process_count()} processes the mesh spans "
            f"all {len(available)} devices ({jax.local_device_count()} per process), got "
            f"{num_devices}; leave it None"
        )
    if num_devices is not None and num_devices > len(available):
        raise ConfigError(
            f"config.runtime.num_devices: {num_devices} requested but only {len(available)} "
            f"{available[0].platform} device(s) are available; use "
            f"--config.runtime.num_devices={len(available)} or leave it None (every device)"
        )
    return make_mesh(num_devices)


def _check_batch_size(mesh: Mesh, field: str, batch_size: int) -> None:
    """A batch splits evenly over the mesh, or a `ConfigError` naming `field`."""
    n = mesh.devices.size
    if batch_size % n:
        suggestion = max(n, batch_size // n * n)
        processes = jax.process_count()
        if processes > 1:
            # The batch is global: every process feeds its devices' share of it.
            raise ConfigError(
                f"{field}: the global batch must be a multiple of the global device count "
                f"({n}: {processes} processes × {n // processes} devices), got {batch_size}; "
                f"use e.g. --{field}={suggestion}"
            )
        raise ConfigError(
            f"{field}: must be a multiple of the number of devices ({n}) for data-parallel "
            f"training, got {batch_size}; use e.g. --{field}={suggestion}, or "
            "--config.runtime.num_devices to train on fewer devices"
        )
