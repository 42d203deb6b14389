"""The engine of an experiment: one `Trainer` per model, mesh and optimizer, reused.

A `Trainer` owns compiled functions; runs in one process that share the model, mesh and
optimizer settings (the methods and seeds of a sweep, the tests, a defense of a trained
model) reuse one instead of compiling the same steps again.
"""

from __future__ import annotations

from jaxbd.pipeline.config import ExperimentSettings
from jaxbd.train import Trainer, make_mesh

_TRAINERS: dict[tuple, Trainer] = {}


def make_trainer(settings: ExperimentSettings, num_classes: int) -> Trainer:
    """The engine for these settings: built once per distinct model/mesh/optimizer, then
    reused (only the progress-bar flag is updated per run).

    Raises:
        ValueError: if a batch size is not a multiple of the device count, or more devices
            are asked for than exist.
    """
    s, t, r = settings, settings.train, settings.runtime
    mesh = make_mesh(r.num_devices)
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
