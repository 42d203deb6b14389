"""What a grid costs: its work counted from the configuration, and a projection of its wall
time from a measured reduced run of it, or from an assumed training throughput.

- `count(config)`: the work (`Work`): epochs over the training set per cell and the
  selection's shared pretraining, and per defense run its tuning-step budget;
- `project_measured(config, reduced_dir)`: seconds, projected to first order from a reduced
  grid of the same model and image size that ran to the end (what
  `scripts/device_checks.sh` runs: fewer attacks, seeds, epochs, budgets and tuning steps);
- `project_throughput(config, images_per_s)`: seconds at an assumed training throughput.

Each function's docstring states its model of the cost.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from typing import Any

import ml_collections

from jaxbd import attacks
from jaxbd.pipeline import grid as grid_lib
from jaxbd.pipeline.stages.experiment_settings import ExperimentSettings
from jaxbd.runs.rundir import METRICS_FILE, SUMMARY_FILE
from jaxbd.settings import ConfigError


@dataclasses.dataclass(frozen=True)
class Work:
    """A grid's work.

    Attributes:
        cells: cells (attacked models).
        epochs: epochs over the training set, all cells and shared runs together.
        num_train: training images, N.
        defense_runs: defense runs (cells × defenses × budgets).
        steps: per (defense label, budget label): the tuning-step budget of one run.
        defender_images: per budget label: the defender's images (tuning + held out).
        rows: per (defense label, budget label): curve rows of one run (at most).
        num_test: test images (each row evaluates them clean and triggered).
        batch: per defense label: its tuning batch size.
    """

    cells: int
    epochs: float
    num_train: int
    defense_runs: int
    steps: dict[tuple[str, str], int]
    defender_images: dict[str, int]
    rows: dict[tuple[str, str], int]
    num_test: int
    batch: dict[str, int]


def count(config: ml_collections.ConfigDict) -> Work:
    """The grid's work, from its configuration.

    Per cell, the epochs over the training set that train its attacked model — the dense
    arm, the pruned arm's IMP epochs, a surrogate's epochs for an attack whose recipe needs
    one (once per cell), and the selection's shared pretraining run once per (attack, seed)
    when a selection method is in the grid (selected subsets are counted at full size: an
    upper bound) — and per defense run its tuning-step budget.
    """
    g = grid_lib.validate(config)
    first = ExperimentSettings.from_config(grid_lib.cell_config(config, g, g.cells()[0], "-"))
    n = _num(first.data, "train")
    per_cell = first.train.epochs
    if first.prune is not None:
        p = first.prune
        per_cell += p.rewind_epoch + p.rounds * (p.round_epochs - p.rewind_epoch) + p.final_epochs
    epochs = 0.0
    for cell in g.cells():
        epochs += per_cell
        if attacks.recipe(cell.attack).surrogate:
            epochs += config.attack.surrogate_epochs
    if any(m != grid_lib.FULL for m in g.methods):
        epochs += len(g.attacks) * len(g.seeds) * config.select.pretrain_epochs
    steps, rows, batch = {}, {}, {}
    every = config.sweep.defense.eval_every
    for defense, budget in g.defense_runs():
        repair = grid_lib.repair_config(config, g, defense)
        steps[defense.label, budget.label] = repair.steps
        rows[defense.label, budget.label] = 1 + -(-repair.steps // every)
        batch[defense.label] = repair.batch_size
    images = {
        b.label: b.per_class * first.data.num_classes if b.per_class else round(b.fraction * n)
        for b in g.budgets
    }
    images[grid_lib.NO_DATA.label] = 0
    return Work(
        cells=len(g.cells()),
        epochs=epochs,
        num_train=n,
        defense_runs=len(g.cells()) * len(g.defense_runs()),
        steps=steps,
        defender_images=images,
        rows=rows,
        num_test=_num(first.data, "test"),
        batch=batch,
    )


def project_throughput(config: ml_collections.ConfigDict, images_per_s: float) -> dict[str, Any]:
    """Seconds of the grid at a training throughput.

    `count`'s work at an assumed training throughput: training and tuning images at
    `images_per_s`, each curve row's evaluation of the clean and triggered test sets as
    forward passes at 3× that; a repair's own planning is not counted (a lower bound for
    Neural Cleanse and NAD).
    """
    w = count(config)
    train = w.epochs * w.num_train / images_per_s
    per_cell = 0.0
    for (label, _), steps in w.steps.items():
        tuning = steps * w.batch[label] / images_per_s
        evaluation = w.rows[label, _] * 2 * w.num_test / (3 * images_per_s)
        per_cell += tuning + evaluation
    defenses = per_cell * w.cells
    return {"train_s": train, "defense_s": defenses, "total_s": train + defenses, "work": w}


def project_measured(config: ml_collections.ConfigDict, reduced_dir: str) -> dict[str, Any]:
    """Seconds of the grid from a finished reduced grid, to first order.

    - an epoch over N images costs the reduced cells' median dense epoch (epochs after the
      first, which compiles) × N / N_reduced; a cell's fixed part (data, poisoning,
      evaluation, compilation, checkpoints: its wall time minus its epochs at the median) is
      as measured;
    - a defense run's tuning is a step cost a (at most the cells' training step per image, at
      the repair's batch) and a curve row's cost b, from the median seconds of the repair's
      measured chunks of `eval_every` steps after each run's first (`tune` events in
      metrics.jsonl): steps × a + rows × b at the full grid's steps and rows; its planning
      (wall time minus tuning: Neural Cleanse's trigger search, NAD's teacher, setup,
      checkpoints) is the median of the measured runs at the same budget, or else scaled by
      (defender images at the budget / at the measured one, never below 1), the planning
      being mostly passes over the defender's images (an over-estimate where it is a fixed
      number of steps, as NAD's teacher);
    - compilation (a run's first chunk beyond the steady cost, the first run's planning
      beyond the median, the first cell's fixed part beyond the median) is counted once, as
      a process compiles a step once. With a single measured run per repair (a reduced grid
      of one cell) the medians still hold those compilations: an over-estimate.

    Raises:
        ConfigError: if the reduced grid has no finished cell, or lacks a defense run of a
            repair the full grid runs.
    """
    with open(os.path.join(reduced_dir, grid_lib.SWEEP_FILE)) as f:
        reduced_config = ml_collections.ConfigDict(json.load(f))
    rg = grid_lib.validate(reduced_config)
    r = count(reduced_config)
    epoch_s, fixed_s, step_s, runs = [], [], [], {}
    for cell in rg.cells():
        folder = rg.cell_dir(reduced_dir, cell)
        if not os.path.exists(os.path.join(folder, SUMMARY_FILE)):
            continue
        with open(os.path.join(folder, SUMMARY_FILE)) as f:
            wall = json.load(f)["wall_seconds"]
        seconds = [x["seconds"] for x in _events(folder, "epoch") if x.get("phase") == "dense"]
        if len(seconds) < 2:
            continue
        median = statistics.median(seconds[1:])
        epoch_s.append(median)
        fixed_s.append(wall - median * len(seconds))
        step_s.append(median / max(1, _steps_per_epoch(reduced_config, r.num_train)))
        for defense, budget in rg.defense_runs():
            path = rg.defense_dir(reduced_dir, cell, defense, budget)
            if os.path.exists(os.path.join(path, SUMMARY_FILE)):
                with open(os.path.join(path, SUMMARY_FILE)) as f:
                    summary = json.load(f)
                chunks = [x["seconds"] for x in _events(path, "tune")][1:]  # after step 0
                runs.setdefault(defense.name, []).append((summary, chunks, defense, budget))
    if not fixed_s:
        raise ConfigError(
            f"--reduced: {reduced_dir}: no finished cell with two or more dense epochs"
        )
    w, g = count(config), grid_lib.validate(config)
    epoch = statistics.median(epoch_s) * w.num_train / r.num_train
    # A cell's fixed part at its median; the first cell's excess (compiling the model's
    # steps) once, as a process pays it once.
    fixed = statistics.median(fixed_s)
    train = w.epochs * epoch + w.cells * fixed + max(fixed_s) - fixed
    step = statistics.median(step_s)  # one training step of the cells' batch
    batch = reduced_config.train.batch_size
    every = reduced_config.sweep.defense.eval_every
    per_image = step / batch  # a plain training step's seconds per image
    costs = {}  # repair -> (a step's seconds per image, a row's seconds, compile seconds)
    for name, measured in runs.items():
        # A chunk: `every` steps and one row. A run's first chunk also compiles (the first
        # run of the process: later runs of the repair reuse its engine), so the steady cost
        # is the median of the later chunks of every run.
        steady = [c for _, chunks, _, _ in measured for c in chunks[1:]]
        if steady:
            chunk = statistics.median(steady)
            images = every * r.batch[measured[0][2].label]
            a = min(per_image, chunk / images)
            first = max(chunks[0] for _, chunks, _, _ in measured if chunks)
            costs[name] = (a, chunk - images * a, max(first - chunk, 0.0))
    # A repair that tuned no steps in the reduced run (Neural Cleanse flagging no label) is
    # costed with the plain step and the median row of the others.
    row = statistics.median([c[1] for c in costs.values()]) if costs else 0.0
    defense_total = 0.0
    for name in {d.name for d in g.defenses}:
        if name not in runs:
            raise ConfigError(f"--reduced: {reduced_dir}: no finished {name} run to project from")
        defense_total += costs.get(name, (0.0, 0.0, 0.0))[2]  # compiled once per process
        plannings = [m["wall_seconds"] - m["tune_seconds_this_invocation"] for m, *_ in runs[name]]
        defense_total += max(plannings) - statistics.median(plannings)  # the first run's
    for defense, budget in g.defense_runs():
        measured = runs[defense.name]
        a, b, _ = costs.get(defense.name, (per_image, row, 0.0))
        steps, rows = w.steps[defense.label, budget.label], w.rows[defense.label, budget.label]
        tune = steps * w.batch[defense.label] * a + rows * b
        # The planning at the same budget where measured, else scaled to the defender's size.
        same = [m for m in measured if m[3].label == budget.label]
        scale = 1.0
        if not same:
            same = measured
            scale = w.defender_images[budget.label] / max(r.defender_images[same[0][3].label], 1)
        planning = statistics.median(
            m[0]["wall_seconds"] - m[0]["tune_seconds_this_invocation"] for m in same
        )
        defense_total += (tune + planning * max(scale, 1.0)) * w.cells
    return {
        "epoch_s": epoch,
        "train_s": train,
        "defense_s": defense_total,
        "total_s": train + defense_total,
        "work": w,
    }


def _steps_per_epoch(config: ml_collections.ConfigDict, num_train: int) -> int:
    """Training steps per epoch of a grid's cells (the batch does not change with them)."""
    return num_train // config.train.batch_size


def _events(folder: str, event: str) -> list[dict]:
    """The rows of one event in a run directory's metrics.jsonl."""
    with open(os.path.join(folder, METRICS_FILE)) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [row for row in rows if row.get("event") == event]


def _num(data, split: str) -> int:
    """The training or test set's size the data settings give (limits applied)."""
    limit = getattr(data, f"{split}_limit")
    if limit is not None:
        return limit
    if data.name == "synthetic":
        return getattr(data, f"num_{split}")
    if data.name == "cifar10":
        return {"train": 50_000, "test": 10_000}[split]
    raise ConfigError(
        f"the size of dataset {data.name!r} is not known here: set data.{split}_limit"
    )
