"""The training arms of an experiment: the dense network on the selection, and the pruned
arm (IMP with rewinding from the dense arm's initialization, then the final sparse network).

A `Cell` is one prepared experiment (set up, selected, its run directory claimed); each arm
trains a group of cells that differ only in their seed, together when there are several
(`jaxbd.runs.train_phase_group`), and records its results on the cells.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

import jax

from jaxbd import prune, rng, select
from jaxbd.pipeline.stages.experiment_settings import ExperimentSettings
from jaxbd.pipeline.stages.setup import Setup
from jaxbd.pipeline.stages.test_metrics import EvaluateFn
from jaxbd.runs import RunDir, train_phase_group
from jaxbd.train import CosineSchedule, DeviceData, Trainer, TrainState


@dataclasses.dataclass
class Cell:
    """One prepared experiment: everything its training arms and summary need."""

    settings: ExperimentSettings
    rundir: RunDir
    started: float
    resumed: bool
    trainer: Trainer
    setup: Setup
    data: DeviceData  # the poisoned training set, with the selection's loss weights
    indices: jax.Array | None  # the selection on the devices (None: every example)
    selection: select.Selection
    selection_info: dict
    evaluate_fn: EvaluateFn
    # Filled in by the arms:
    state: TrainState | None = None  # the trained dense model
    dense: dict | None = None  # its final test metrics
    last_row: dict | None = None  # the dense phase's last log row
    train_seconds: float = 0.0
    pruned: dict | None = None  # the pruned arm's summary object

    def make_schedule(self, epochs: int) -> CosineSchedule:
        """The learning-rate schedule of `epochs` epochs over this cell's selection."""
        steps_per_epoch = self.trainer.steps_per_epoch(len(self.selection))
        return self.settings.train.schedule(epochs, steps_per_epoch)


def final_metrics(last_row: dict, state: TrainState, evaluate_fn: EvaluateFn) -> dict:
    """A phase's final test metrics: its last log row holds them (a phase always evaluates
    after its last epoch, and a resumed finished phase restores that row); evaluated afresh
    only if the row lacks them."""
    metrics = {k.removeprefix("test_"): v for k, v in last_row.items() if k.startswith("test_")}
    return metrics or evaluate_fn(state)


def _phases(cells: Sequence[Cell]) -> Callable:
    """`prune.TrainPhases` over the cells' data: checkpointed phases in their run
    directories, the members trained together."""
    c0 = cells[0]

    def train(name, states, shuffle_keys, epochs, evaluate_fns, eval_every):
        return train_phase_group(
            name,
            c0.trainer,
            states,
            [cell.data for cell in cells],
            epochs=epochs,
            shuffle_keys=shuffle_keys,
            rundirs=[cell.rundir for cell in cells],
            evaluate_fns=evaluate_fns,
            eval_every=eval_every,
            indices=None if c0.indices is None else [cell.indices for cell in cells],
            epoch_fn=c0.setup.epoch_fn,
        )

    return train


def train_dense(cells: Sequence[Cell]) -> None:
    """Trains every cell's dense arm (phase "dense"; together when there are several)."""
    c0 = cells[0]
    trainer, t = c0.trainer, c0.settings.train
    states = [
        trainer.init_state(
            rng.stream(cell.settings.seed, "init"),
            cell.setup.splits.train.image_shape,
            cell.make_schedule(t.epochs),
            rng=rng.stream(cell.settings.seed, "augment"),
        )
        for cell in cells
    ]
    started = time.perf_counter()
    states, last_rows = _phases(cells)(
        "dense",
        states,
        [rng.stream(cell.settings.seed, "shuffle") for cell in cells],
        t.epochs,
        [cell.evaluate_fn for cell in cells],
        t.eval_every_epochs,
    )
    seconds = time.perf_counter() - started
    for cell, state, last_row in zip(cells, states, last_rows, strict=True):
        cell.state, cell.last_row, cell.train_seconds = state, last_row, seconds
        cell.dense = final_metrics(last_row, state, cell.evaluate_fn)


def train_pruned(cells: Sequence[Cell]) -> None:
    """The pruned arm: IMP with rewinding on the same data, from the dense arm's
    initialization, then the final sparse network (`jaxbd.prune.run_imp_group`)."""
    c0 = cells[0]
    settings = c0.settings.prune
    started = time.perf_counter()
    results = prune.run_imp_group(
        c0.trainer,
        settings,
        init_keys=[rng.stream(cell.settings.seed, "init") for cell in cells],
        streams=[functools.partial(rng.stream, cell.settings.seed) for cell in cells],
        make_schedule=c0.make_schedule,
        image_shape=c0.setup.splits.train.image_shape,
        train_phases=_phases(cells),
        evaluate_fns=[cell.evaluate_fn for cell in cells],
        eval_every=c0.settings.train.eval_every_epochs,
        log=lambda m, row: cells[m].rundir.log_once(row, key=("event", "round")),
    )
    seconds = time.perf_counter() - started
    for cell, imp in zip(cells, results, strict=True):
        pruned = final_metrics(imp.last_row, imp.state, cell.evaluate_fn)
        pruned.update(
            sparsity={
                "total": imp.sparsity["total"],
                "per_round": imp.round_sparsity,
                "per_layer": imp.sparsity["layers"],
            },
            num_weights_kept=imp.sparsity["prunable"] - imp.sparsity["pruned"],
            num_prunable=imp.sparsity["prunable"],
            final_train_loss=imp.last_row.get("loss"),
            final_train_accuracy=imp.last_row.get("accuracy"),
            **{f"imp_{k}": v for k, v in dataclasses.asdict(settings).items()},
            seconds_this_invocation=seconds,
        )
        cell.pruned = pruned
