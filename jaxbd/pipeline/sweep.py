"""The reference study's grid: selection methods × seeds, each cell one experiment.

`run(config, workdir)` (what `scripts/sweep.py` calls) runs every cell of
`config.sweep.methods × config.sweep.seeds` as `jaxbd.pipeline.experiment.run` in
`workdir/cells/<method>/seed<seed>`, and after every cell (or group of cells) rewrites the
grid's report (`results.csv`, `table.md`, plots; `jaxbd.pipeline.report`).

- **Replicate seeds can train together.** With `config.sweep.seeds_together` = G > 1, a
  method's seeds run in groups of G through `jaxbd.pipeline.experiment.run_group`: each cell is
  prepared (poisoned, selected) on its own, then the G dense arms train as one
  `vmap`-batched model, and the G pruned arms likewise. Each cell's directory and summary
  have the form a one-at-a-time run writes, so G may change between invocations (the
  numbers are another valid draw, not a bitwise copy: training amplifies the different
  rounding of batched kernels). Cells run
  seed by seed (G = 1) or method by method (G > 1). The default is 1, what measured faster:
  on the CPU one model already occupies every core and batching was 4× slower
  (BENCHMARKS.md). On an accelerator a ResNet-18 on 32×32 images leaves most of the device
  idle, which batching could fill, but XLA turns batched convolutions into grouped ones,
  whose backward pass is reported slow on CUDA (jax-ml/jax#13800); `scripts/bench.py
  --members` measures it.

- **Nothing is recomputed.** A finished cell (its `summary.json` exists) is read, not run; an
  interrupted cell resumes from its last checkpoint; re-running the same command after an
  interruption continues the grid. Adding seeds or methods later runs only the new cells.
- **Work shared within a seed is done once.** The poisoned training set is a deterministic
  function of the seed (every cell of a seed poisons identically), and the pretraining run
  that EL2N, forgetting, CRAIG and grad_align score with is stored once per seed under
  `workdir/pretrain` (`select.pretrain_dir`) and reused by each of them. The compiled
  training steps are shared by every cell in the process (`jaxbd.pipeline.engine`).
- **The grid is one configuration.** `workdir/sweep.json` records it; a different
  configuration (other than the method and seed lists, and the execution settings of
  `jaxbd.runs.identity`) is refused, as a cell directory refuses a different run.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import ml_collections
from absl import logging

from jaxbd import attacks, runs, select
from jaxbd.pipeline import experiment, report
from jaxbd.runs.rundir import SUMMARY_FILE
from jaxbd.settings import ConfigError

SWEEP_FILE = "sweep.json"
FULL = "full"
"""The method name of the no-selection cell (training on the whole poisoned set)."""

# Settings a grid may change between invocations: which cells exist, and how they execute.
_SWEEP_EXECUTION = (*runs.EXECUTION, "sweep.methods", "sweep.seeds", "sweep.seeds_together")


def cell_config(config: ml_collections.ConfigDict, method: str, seed: int, pretrain_dir: str):
    """The experiment configuration of one grid cell (the sweep settings removed)."""
    c = copy.deepcopy(config)
    with c.unlocked():  # configs from the command line (config_flags) are locked
        del c["sweep"]
    c.seed = seed
    c.select.name = None if method == FULL else method
    c.select.pretrain_dir = pretrain_dir
    return c


def cell_dir(workdir: str, method: str, seed: int) -> str:
    """Where a cell's run directory lives."""
    return os.path.join(workdir, "cells", method, f"seed{seed}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the sweep settings and every cell's experiment settings before any work.

    Raises:
        ConfigError: naming the offending field.
    """
    if "sweep" not in config:
        raise ConfigError(
            "config.sweep: missing; a sweep config needs sweep.methods and sweep.seeds "
            "(see configs/paper.py)"
        )
    methods, seeds = list(config.sweep.methods), list(config.sweep.seeds)
    valid = (FULL, *select.SELECTORS)
    if not methods or any(m not in valid for m in methods) or len(set(methods)) < len(methods):
        raise ConfigError(
            f"config.sweep.methods: must be distinct names from {list(valid)}, got {methods}"
        )
    if not seeds or any(not isinstance(s, int) for s in seeds) or len(set(seeds)) < len(seeds):
        raise ConfigError(f"config.sweep.seeds: must be distinct integers, got {seeds}")
    together = seeds_together(config)
    if not isinstance(together, int) or together < 1:
        raise ConfigError(f"config.sweep.seeds_together: must be an integer >= 1, got {together!r}")
    name = config.attack.name
    if together > 1 and name in attacks.ATTACKS and not attacks.recipe(name).groupable:
        raise ConfigError(
            f"config.sweep.seeds_together: {name} trains one model at a time (its own "
            f"epoch function); use 1, got {together}"
        )
    for method in methods:
        experiment.validate_config(cell_config(config, method, seeds[0], "unused"))


def _claim(workdir: str, config: ml_collections.ConfigDict) -> runs.DirectoryLock:
    """Records the grid's configuration, or refuses a workdir holding another grid.

    Returns:
        The lock on the grid's directory (held while the grid runs: a second sweep on the
        same directory is refused, naming this process).
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, SWEEP_FILE)
    new = config.to_dict()
    if not os.path.exists(path) and set(os.listdir(workdir)) - {runs.LOCK_FILE}:
        raise runs.RunDirError(
            f"{workdir} is not empty and holds no {SWEEP_FILE}: it is not a jaxbd sweep "
            f"directory, and jaxbd will not write into it. Choose another --workdir."
        )
    lock = runs.lock_directory(workdir, what="sweep workdir")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = runs.differences(old, new, execution=_SWEEP_EXECUTION)
        if diff:
            raise runs.RunDirError(
                f"{workdir} holds a sweep with a different configuration:\n  "
                + "\n  ".join(diff)
                + "\nUse the same configuration to continue it, or choose another --workdir."
            )
    runs.write_json_atomic(path, new)
    return lock


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """Runs (or continues) the grid and writes its report.

    Args:
        config: an experiment configuration with a `sweep` section (`methods`, `seeds`).
        workdir: the grid's directory.

    Returns:
        One row per cell (`report.cell_row`), in grid order (seed-major).
    """
    validate(config)
    workdir = os.path.abspath(workdir)
    lock = _claim(workdir, config)
    try:
        return _run_cells(config, workdir)
    finally:
        lock.release()


def _run_cells(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """Every cell of the grid, then the report (the directory is claimed and locked)."""
    pretrain_dir = os.path.join(workdir, "pretrain")
    methods, seeds = list(config.sweep.methods), list(config.sweep.seeds)
    together = seeds_together(config)
    summaries: dict[tuple[str, int], dict] = {}
    started = time.perf_counter()

    def write_report(plots=False):
        rows = [
            report.cell_row(m, s, summaries[m, s])
            for s in seeds
            for m in methods
            if (m, s) in summaries
        ]
        report.write(workdir, rows, grid_seconds=time.perf_counter() - started, plots=plots)
        return rows

    for method, group in _batches(methods, seeds, together):
        todo = []
        for seed in group:
            summary_path = os.path.join(cell_dir(workdir, method, seed), SUMMARY_FILE)
            if os.path.exists(summary_path):
                logging.info("cell %s seed %d: finished, skipped", method, seed)
                with open(summary_path) as f:
                    summaries[method, seed] = json.load(f)
            else:
                todo.append(seed)
        if todo:
            logging.info("cells %s seeds %s: running", method, todo)
            results = experiment.run_group(
                [cell_config(config, method, seed, pretrain_dir) for seed in todo],
                [cell_dir(workdir, method, seed) for seed in todo],
            )
            summaries.update({(method, s): r for s, r in zip(todo, results, strict=True)})
        write_report()
    return write_report(plots=True)


def seeds_together(config: ml_collections.ConfigDict) -> int:
    """How many seeds of a method train together (`config.sweep.seeds_together`, default 1)."""
    return config.sweep.get("seeds_together", 1)


def _batches(methods: list[str], seeds: list[int], together: int):
    """(method, seeds) batches in execution order: one cell at a time seed by seed (so a
    seed's cells finish together), or each method's seeds in groups of `together`."""
    if together == 1:
        return [(m, [s]) for s in seeds for m in methods]
    return [(m, seeds[i : i + together]) for m in methods for i in range(0, len(seeds), together)]
