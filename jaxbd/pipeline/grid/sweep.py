"""The study grid: attacks × selection methods × seeds, each cell one attacked model, and every
defense × defender budget applied to each model.

`run(config, workdir)` (what `scripts/sweep.py` calls) runs every cell of the grid
(`jaxbd.pipeline.grid`) as `jaxbd.pipeline.experiment.run_group`, then each of the cell's
defense runs (`jaxbd.pipeline.defend.run`) and detection runs (`jaxbd.pipeline.detect.run`),
and writes the grid's report (`jaxbd.pipeline.grid.report`, `jaxbd.pipeline.grid.defense_report`).

- Nothing is recomputed: a finished run (its `summary.json` exists) is read, an
  interrupted one resumes; adding axis entries runs only what is new.
- Work shared is done once: a cell's model is defended by every defense and budget on its
  data rebuilt once; a seed's selection methods share one pretraining run.
- Replicate seeds can train together (`sweep.seeds_together`, vmap-batched).
- One directory, one grid, several jobs: `sweep.json` records the configuration, a
  different one is refused (`grid.differences`); shard jobs (`sweep.shard`,
  `sweep.num_shards`) fill one directory under locks, and the last one writes the report.

In detail: docs/grids.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import ml_collections
from absl import logging

from jaxbd import runs
from jaxbd.pipeline import defend, detect, experiment, grid
from jaxbd.pipeline.grid import defense_report, report
from jaxbd.pipeline.stages import setup
from jaxbd.pipeline.stages import source as source_lib
from jaxbd.pipeline.stages.experiment_settings import ExperimentSettings
from jaxbd.runs.rundir import SUMMARY_FILE

SWEEP_FILE = grid.SWEEP_FILE
FULL = grid.FULL
SHARDS = "shards"
"""The folder of the shard jobs' locks (`shards/<i>-of-<n>`)."""

# How long a shard job waits for the directory's lock, held by another job for a moment.
_LOCK_WAIT_S = 120.0


def cell_dir(workdir: str, method: str, seed: int, attack: str | None = None) -> str:
    """Where a cell's run directory lives (`attack` None: the layout without an attack level)."""
    parts = [] if attack is None else [attack]
    return os.path.join(workdir, "cells", *parts, method, f"seed{seed}")


def validate(config: ml_collections.ConfigDict) -> grid.Grid:
    """Checks the sweep settings and every cell's experiment settings before any work.

    Raises:
        ConfigError: naming the offending field.
    """
    return grid.validate(config)


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """Runs (or continues) this job's share of the grid and writes the report.

    Args:
        config: an experiment configuration with a `sweep` section
            (`jaxbd.pipeline.defaults.sweep_section`).
        workdir: the grid's directory.

    Returns:
        One row per finished cell (`report.cell_row`), in grid order (seed-major).
    """
    g = grid.validate(config)
    workdir = os.path.abspath(workdir)
    if g.defenses or g.detectors:
        first = grid.cell_config(config, g, g.cells()[0], "-")
        train = setup.load_data(ExperimentSettings.from_config(first)).train
        grid.check_defender_sizes(config, g, train)
    claim = _claim(workdir, config, g)
    started = time.perf_counter()
    try:
        sharded = g.num_shards > 1
        for batch in g.batches():
            _run_batch(config, g, workdir, batch)
            if not sharded:  # the report so far; a shard leaves it to the last job
                write_report(config, g, workdir, grid_seconds=time.perf_counter() - started)
        if not sharded:
            write_report(config, g, workdir, grid_seconds=time.perf_counter() - started, plots=True)
        else:
            _report_if_complete(config, g, workdir)
        return _cell_rows(g, workdir)
    finally:
        claim.release()


def _run_batch(config, g: grid.Grid, workdir: str, batch: list[grid.Cell]) -> None:
    """Trains a batch's unfinished cells (together when the batch has several), then runs
    each cell's unfinished defenses."""
    todo = [c for c in batch if not _finished(g.cell_dir(workdir, c))]
    for cell in batch:
        if cell not in todo:
            logging.info("cell %s: finished, skipped", _name(cell))
    if todo:
        logging.info("cells %s: running", ", ".join(_name(c) for c in todo))
        pretrain_dir = os.path.join(workdir, "pretrain")
        experiment.run_group(
            [grid.cell_config(config, g, c, pretrain_dir) for c in todo],
            [g.cell_dir(workdir, c) for c in todo],
        )
    for cell in batch:
        _defend_cell(config, g, workdir, cell)


def _defend_cell(config, g: grid.Grid, workdir: str, cell: grid.Cell) -> None:
    """Every unfinished defense and detection run of one (finished) cell, on its data rebuilt
    once."""
    todo = [
        (d, b) for d, b in g.defense_runs() if not _finished(g.defense_dir(workdir, cell, d, b))
    ]
    checks = [
        (d, b) for d, b in g.detection_runs() if not _finished(g.detection_dir(workdir, cell, d, b))
    ]
    if not todo and not checks:
        return
    source_dir = g.cell_dir(workdir, cell)
    src = source_lib.open_source(
        source_dir, arm=g.source_arm, runtime=config.runtime, allow_defended=False
    )
    holder: list[runs.RunDir] = []

    def setup_rundir() -> runs.RunDir:
        # Only an attack with a surrogate writes while its data are rebuilt: the surrogate's
        # phase, once for all of the cell's defenses, in a directory of the grid's own.
        rundir = runs.RunDir(g.setup_dir(workdir, cell))
        rundir.open(dict(src.experiment.config))
        holder.append(rundir)
        return rundir

    try:
        rebuilt = source_lib.rebuild(src, rundir=setup_rundir)
        for defense, budget in todo:
            logging.info("cell %s: %s at %s: running", _name(cell), defense.label, budget.label)
            defend.run(
                grid.defense_config(config, g, cell, defense, budget, source_dir),
                g.defense_dir(workdir, cell, defense, budget),
                rebuilt=rebuilt,
            )
        for detector, budget in checks:
            logging.info("cell %s: %s at %s: running", _name(cell), detector, budget.label)
            detect.run(
                grid.detect_config(config, g, cell, detector, budget, source_dir),
                g.detection_dir(workdir, cell, detector, budget),
                rebuilt=rebuilt,
            )
    finally:
        for rundir in holder:
            rundir.close()


def write_report(
    config: ml_collections.ConfigDict,
    g: grid.Grid,
    workdir: str,
    *,
    grid_seconds: float | None = None,
    plots: bool = False,
) -> list[dict[str, Any]]:
    """Writes the report of every finished cell and defense run (see the module docstring).

    Returns:
        The cell rows.
    """
    rows = _cell_rows(g, workdir)
    report.write(workdir, rows, grid_seconds=grid_seconds, plots=plots)
    if g.defenses or g.detectors:
        defense_report.write(workdir, g, config, plots=plots)
    return rows


def report_only(workdir: str) -> list[dict[str, Any]]:
    """Writes a grid directory's report from what is finished in it, from its recorded
    configuration (`sweep.json`), under the directory's lock: what
    `scripts/summarize.py --grid` runs, e.g. after a sharded grid's jobs ended.

    Raises:
        RunDirError: `workdir` is not a grid directory, or its lock stays held (an
            unsharded grid is running in it).
    """
    workdir = os.path.abspath(workdir)
    path = os.path.join(workdir, SWEEP_FILE)
    if not os.path.exists(path):
        raise runs.RunDirError(f"{workdir} holds no {SWEEP_FILE}: it is not a jaxbd grid directory")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    g = grid.validate(config)
    with _lock_grid(workdir, wait=_LOCK_WAIT_S):
        return write_report(config, g, workdir, plots=True)


# -- the directory's claim: sweep.json and the locks ------------------------------------------


@dataclasses.dataclass
class _Claim:
    """The locks one job holds while it runs."""

    locks: list[runs.DirectoryLock]

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()


def _claim(workdir: str, config: ml_collections.ConfigDict, g: grid.Grid) -> _Claim:
    """Records the grid's configuration (or checks it against the recorded one) and takes
    this job's locks.

    Raises:
        RunDirError: a directory that is not a grid's, another configuration, or another job
            that may not run beside this one (an unsharded run, or shards of another count).
    """
    _check_is_a_grid(workdir)
    if g.num_shards == 1:
        lock = runs.lock_directory(workdir, what="sweep workdir")
        try:
            _record(workdir, config)
            _check_other_jobs(workdir, own=None)
        except BaseException:
            lock.release()
            raise
        return _Claim([lock])
    own = f"{g.shard}-of-{g.num_shards}"
    shard_lock = runs.lock_directory(os.path.join(workdir, SHARDS, own), what="grid shard")
    try:
        _check_other_jobs(workdir, own=own)
        with _lock_grid(workdir, wait=_LOCK_WAIT_S):
            _record(workdir, config)
    except BaseException:
        shard_lock.release()
        raise
    return _Claim([shard_lock])


def _check_is_a_grid(workdir: str) -> None:
    """Refuses a non-empty directory that holds no grid (writing nothing into it)."""
    if not os.path.isdir(workdir) or os.path.exists(os.path.join(workdir, SWEEP_FILE)):
        return
    # What a starting job creates before sweep.json exists: the lock, the shard locks.
    if set(os.listdir(workdir)) - {runs.LOCK_FILE, SHARDS}:
        raise runs.RunDirError(
            f"{workdir} is not empty and holds no {SWEEP_FILE}: it is not a jaxbd sweep "
            f"directory, and jaxbd will not write into it. Choose another --workdir."
        )


def _record(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes `sweep.json`, or refuses another grid's directory (under the directory's lock)."""
    _check_is_a_grid(workdir)
    path = os.path.join(workdir, SWEEP_FILE)
    new = config.to_dict()
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = grid.differences(old, new)
        if diff:
            raise runs.RunDirError(
                f"{workdir} holds a sweep with a different configuration:\n  "
                + "\n  ".join(diff)
                + "\nUse the same configuration to continue it, or choose another --workdir."
            )
    runs.write_json_atomic(path, grid.complete(new))


def _check_other_jobs(workdir: str, *, own: str | None) -> None:
    """Refuses to run beside shard jobs that may take this job's cells: any shard job for
    an unsharded run (`own` None), shards of another count for a shard job."""
    folder = os.path.join(workdir, SHARDS)
    if not os.path.isdir(folder):
        return
    count = None if own is None else own.split("-of-")[1]
    for name in sorted(os.listdir(folder)):
        if name == own or (count is not None and name.endswith(f"-of-{count}")):
            continue
        try:
            runs.lock_directory(os.path.join(folder, name), what="grid shard").release()
        except runs.RunDirError:
            raise runs.RunDirError(
                f"{workdir}: shard job {name} of this grid is running; "
                + (
                    "run the remaining cells as shards of the same count, or wait for it"
                    if own is not None
                    else "wait for the shard jobs to end before running the grid in one job"
                )
            ) from None


def _lock_grid(workdir: str, *, wait: float) -> runs.DirectoryLock:
    """The directory's lock, waiting up to `wait` seconds for another job's moment with it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return runs.lock_directory(workdir, what="sweep workdir")
        except runs.RunDirError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _report_if_complete(config, g: grid.Grid, workdir: str) -> None:
    """A shard job's end: the report, if every cell and defense run of the grid is finished."""
    with _lock_grid(workdir, wait=_LOCK_WAIT_S):
        missing = _unfinished(g, workdir)
        if not missing:
            write_report(config, g, workdir, plots=True)
            logging.info(
                "shard %d of %d: the grid is complete; report written", g.shard, g.num_shards
            )
            return
    logging.info(
        "shard %d of %d: its share is done; %d runs of the grid are not finished yet (other "
        "shards). The last job to finish writes the report, or: python scripts/summarize.py "
        "--grid %s",
        g.shard,
        g.num_shards,
        len(missing),
        workdir,
    )


# -- reading the grid back ------------------------------------------------------------------


def _finished(path: str) -> bool:
    return os.path.exists(os.path.join(path, SUMMARY_FILE))


def _unfinished(g: grid.Grid, workdir: str) -> list[str]:
    """The run directories of the whole grid (every shard's) that hold no summary yet."""
    paths = []
    for cell in g.cells():
        paths.append(g.cell_dir(workdir, cell))
        paths += [g.defense_dir(workdir, cell, d, b) for d, b in g.defense_runs()]
        paths += [g.detection_dir(workdir, cell, d, b) for d, b in g.detection_runs()]
    return [p for p in paths if not _finished(p)]


def _cell_rows(g: grid.Grid, workdir: str) -> list[dict[str, Any]]:
    """`report.cell_row` of every finished cell, in grid order."""
    rows = []
    for cell in g.cells():
        path = os.path.join(g.cell_dir(workdir, cell), SUMMARY_FILE)
        if os.path.exists(path):
            with open(path) as f:
                rows.append(report.cell_row(cell.method, cell.seed, json.load(f)))
    return rows


def _name(cell: grid.Cell) -> str:
    return f"{cell.attack}/{cell.method}/seed{cell.seed}"


def seeds_together(config: ml_collections.ConfigDict) -> int:
    """How many seeds of a method train together (`config.sweep.seeds_together`, default 1)."""
    return config.sweep.get("seeds_together", 1)
