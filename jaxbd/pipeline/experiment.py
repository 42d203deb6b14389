"""The experiment pipeline, top to bottom: setup (data → poison → triggered test set) →
select → train dense and pruned arms → summary.json.

`run(config, workdir)` is what `scripts/train.py` calls. Read it first: each stage is one
call into a stage module of `jaxbd.pipeline`, and every random choice comes from its own
named stream of the seed (`jaxbd.rng.stream`). `run_group(configs, workdirs)` runs
replicate seeds of one experiment with their training phases batched into one model (what
`jaxbd.pipeline.grid.sweep` uses); `run` is a group of one.

Training runs in named *phases* ("surrogate" for an attack that needs one, "pretrain" and
"pretrain_<m>" for selection, "dense" on the selection, "imp_rewind", "imp_round<r>" and
"pruned" for the pruned arm; `jaxbd.runs.phase`), each checkpointed at the end of every
epoch under `workdir/checkpoints/<phase>`; the selection itself is saved as
`workdir/selection.npz`. Re-running the same command resumes at the last finished epoch; a
finished run (`summary.json` present) is never overwritten.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from jaxbd import attacks, runs, select
from jaxbd.pipeline.stages import arms, engine, setup
from jaxbd.pipeline.stages.experiment_settings import ExperimentSettings
from jaxbd.pipeline.stages.selection import run_selection
from jaxbd.pipeline.stages.summary import write_summary
from jaxbd.pipeline.stages.test_metrics import make_evaluate_fn
from jaxbd.settings import ConfigError

__all__ = ["ConfigError", "ExperimentSettings", "run", "run_group", "validate_config"]


def validate_config(config: ml_collections.ConfigDict) -> ExperimentSettings:
    """Checks every value the pipeline uses before any work starts.

    Returns:
        The validated settings.

    Raises:
        ConfigError: naming the offending field, its value and what is allowed.
    """
    return ExperimentSettings.from_config(config)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) one experiment and returns its summary.

    Args:
        config: an experiment configuration (see `jaxbd.configs.base_config`).
        workdir: the run directory; created if missing, resumed if it holds an unfinished
            run of the same experiment, refused if finished or different.

    Returns:
        The summary also written to `workdir/summary.json`.
    """
    return run_group([config], [workdir])[0]


def run_group(
    configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str]
) -> list[dict[str, Any]]:
    """Runs (or resumes) experiments that differ only in their seed, training them together.

    Each experiment is prepared as `run` would (setup, selection, each in its own run
    directory), then the dense arms train as one `vmap`-batched model
    (`jaxbd.runs.train_phase_group`), and the pruned arms likewise. Every run directory
    holds what `run` writes (the same phases, checkpoints, log rows and summary fields) and
    resumes either way. The computation is the same too, but not bit for bit: batched
    kernels round differently, and training amplifies rounding, so a grouped run is another
    equally valid draw of the same experiment rather than a copy of the one-at-a-time run
    (BENCHMARKS.md measures how far they drift). Worth it where one model leaves the device
    idle (a small network on an accelerator); on the CPU one model already occupies every
    core and batching is slower (BENCHMARKS.md).

    Args:
        configs: experiment configurations equal in everything but `seed`.
        workdirs: one distinct run directory per configuration.

    Returns:
        Each experiment's summary, in order.

    Raises:
        ConfigError: if the configurations differ in more than the seed, or use an attack
            that trains one model at a time (its recipe is not groupable).
    """
    if len(configs) != len(workdirs) or not configs:
        raise ValueError("run_group needs one workdir per config, and at least one config")
    settings = [validate_config(config) for config in configs]
    if len(configs) > 1:
        _check_groupable(settings, workdirs)
        for workdir in workdirs:  # before any directory is claimed
            runs.RunDir(workdir).check_not_finished()
    cells: list[arms.Cell] = []
    try:
        for s, workdir in zip(settings, workdirs, strict=True):
            cells.append(_prepare(s, workdir))
        sizes = {len(cell.selection) for cell in cells}
        # Subsets of one fraction have one size; anything else trains one at a time.
        groups = [cells] if len(sizes) == 1 else [[cell] for cell in cells]
        if len(groups) > 1:
            logging.warning("selections of different sizes %s: training one at a time", sizes)
        for group in groups:
            arms.train_dense(group)
            if settings[0].prune is not None:
                arms.train_pruned(group)
        return [write_summary(cell, len(cells) // len(groups)) for cell in cells]
    finally:
        for cell in cells:  # each run directory is locked from its claim until here
            cell.rundir.close()


def _check_groupable(settings: Sequence[ExperimentSettings], workdirs) -> None:
    """Refuses experiments that cannot train as one batched model."""
    first = settings[0].config
    for s in settings[1:]:
        diff = [
            line
            for line in runs.differences(first, s.config, execution=())
            if not line.startswith("seed:")
        ]
        if diff:
            raise ConfigError(
                "experiments trained together must differ only in config.seed, got:\n  "
                + "\n  ".join(diff)
            )
    name = settings[0].attack.name
    if not attacks.recipe(name).groupable:
        raise ConfigError(
            f"config.attack.name={name} trains one model at a time (its own epoch function); "
            "run its seeds separately"
        )
    if len({os.path.abspath(w) for w in workdirs}) < len(workdirs):
        raise ConfigError(f"experiments trained together need distinct workdirs: {workdirs}")


def _prepare(settings: ExperimentSettings, workdir: str) -> arms.Cell:
    """Checks, claims the run directory, sets up and selects: everything before the arms."""
    started = time.perf_counter()
    rundir = runs.RunDir(workdir)
    rundir.check_not_finished()
    splits = setup.load_data(settings)
    # The engine validates the batch sizes against the devices.
    trainer = engine.make_trainer(settings, splits.train.num_classes)
    attack = setup.check(settings, trainer, splits)

    # Everything is valid: claim the run directory (new run, or resume).
    resumed = rundir.open(settings.config)
    rundir.log({"event": "start", "resumed": resumed, "time": time.time()})
    stage = setup.build(settings, trainer, splits, rundir, attack)
    poisoned, train_set = stage.poisoned, splits.train
    data = trainer.put(poisoned.dataset.images, poisoned.dataset.labels)
    evaluate_fn = make_evaluate_fn(trainer, splits.test, stage.triggered)

    if settings.select.name is None:
        selection, selection_info, indices = (
            select.make_selection(np.arange(len(train_set))),
            {},
            None,
        )
    else:
        selection, selection_info = run_selection(
            settings,
            trainer,
            data,
            poisoned.dataset.labels,
            image_shape=train_set.image_shape,
            num_classes=train_set.num_classes,
            rundir=rundir,
        )
        # Weights become per-example loss weights with mean 1 over the subset; unselected
        # examples never appear in an epoch.
        weights = np.zeros(len(train_set), np.float32)
        weights[selection.indices] = selection.weights * (
            len(selection) / float(np.sum(selection.weights))
        )
        data = trainer.put(poisoned.dataset.images, poisoned.dataset.labels, weights)
        indices = trainer.replicate(selection.indices)
    return arms.Cell(
        settings=settings,
        rundir=rundir,
        started=started,
        resumed=resumed,
        trainer=trainer,
        setup=stage,
        data=data,
        indices=indices,
        selection=selection,
        selection_info=selection_info,
        evaluate_fn=evaluate_fn,
    )
