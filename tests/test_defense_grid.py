"""The attack × defense grid at toy scale: 2 attacks × 2 defenses × 2 budgets × 2 seeds give
every table and figure; an interrupted grid resumes without training a finished cell again;
a defense added to a finished grid trains no attacked model; another grid is refused, bad
settings before anything is written; shards split the grid and share its directory."""

import contextlib
import csv
import importlib.util
import json
import os
import shutil
import threading

import numpy as np
import pytest
from conftest import tiny_config

from jaxbd import runs
from jaxbd.configs import sweep_section
from jaxbd.defenses import tuning
from jaxbd.pipeline import experiment, grid
from jaxbd.pipeline.grid import cost as grid_cost
from jaxbd.pipeline.grid import defense_report, sweep
from jaxbd.pipeline.stages import engine
from jaxbd.pipeline.stages import source as source_lib
from jaxbd.settings import ConfigError
from jaxbd.train import Trainer

PNG = b"\x89PNG\r\n\x1a\n"


def grid_config(defenses=("finetune", "fine_pruning"), **overrides):
    c = tiny_config(**{"train.epochs": 3, **overrides})
    c.sweep = sweep_section(
        attacks=("badnets", "blended"),
        seeds=(0, 1),
        defenses=defenses,
        defender_budgets=(0.25, 0.5),  # 64 and 128 of the 256 training images
    )
    c.sweep.defense.steps = 8
    c.sweep.defense.eval_every = 4
    c.sweep.defense.finetune.batch_size = 16
    c.sweep.defense.fine_pruning.batch_size = 16
    return c


class Counts:
    """What a grid invocation trained: cells (experiment.run_group), epochs of attacked
    models (Trainer.train_epoch; defenses tune with train_steps), defense runs tuned, the
    rebuilt data of a cell's model, and engines built."""

    def __init__(self, mp, interrupt_tune=None):
        self.cells, self.epochs, self.tunes, self.rebuilds = [], 0, 0, 0
        self.trainers_before = len(engine._TRAINERS)
        run_group, train_epoch = experiment.run_group, Trainer.train_epoch
        tune, rebuild = tuning.tune, source_lib.rebuild

        def counting_run_group(configs, paths):
            self.cells += [(c.attack.name, c.seed) for c in configs]
            return run_group(configs, paths)

        def counting_train_epoch(trainer, *args, **kwargs):
            self.epochs += 1
            return train_epoch(trainer, *args, **kwargs)

        def counting_tune(*args, **kwargs):
            self.tunes += 1
            if self.tunes == interrupt_tune:  # killed after its first curve row past step 0
                on_eval = kwargs["on_eval"]

                def then_interrupt(progress):
                    on_eval(progress)
                    if progress.step > 0:
                        raise KeyboardInterrupt

                kwargs["on_eval"] = then_interrupt
            return tune(*args, **kwargs)

        def counting_rebuild(*args, **kwargs):
            self.rebuilds += 1
            return rebuild(*args, **kwargs)

        mp.setattr(experiment, "run_group", counting_run_group)
        mp.setattr(Trainer, "train_epoch", counting_train_epoch)
        mp.setattr(tuning, "tune", counting_tune)
        mp.setattr(source_lib, "rebuild", counting_rebuild)

    @property
    def new_trainers(self) -> int:
        return len(engine._TRAINERS) - self.trainers_before


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The grid, interrupted in the middle of its sixth defense run, then resumed."""
    workdir = str(tmp_path_factory.mktemp("defense_grid") / "g")
    with pytest.MonkeyPatch.context() as mp:
        first = Counts(mp, interrupt_tune=6)
        with pytest.raises(KeyboardInterrupt):
            sweep.run(grid_config(), workdir)
    with pytest.MonkeyPatch.context() as mp:
        resumed = Counts(mp)
        rows = sweep.run(grid_config(), workdir)
    return workdir, rows, first, resumed


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # the grid: 4 cells, 16 defense runs, resumed; .ci/run runs it
def test_the_interrupted_grid_resumes_without_retraining(finished):
    workdir, rows, first, resumed = finished
    g = grid.validate(grid_config())
    # Cells run seed by seed: seed 0's two cells and their defenses, then (interrupted in the
    # sixth defense run: seed 0 blended's second) nothing more.
    assert first.cells == [("badnets", 0), ("blended", 0)]
    assert first.epochs == 2 * 3 and first.tunes == 6
    # The resumed invocation trains only the two unfinished cells, 3 epochs each, and runs
    # the 16 - 5 unfinished defense runs (the interrupted one resumed, not restarted); a
    # cell's data are rebuilt once for all its defenses, and no engine is built anew.
    assert resumed.cells == [("badnets", 1), ("blended", 1)]
    assert resumed.epochs == 2 * 3
    assert resumed.tunes == 16 - 5
    assert resumed.rebuilds == 3  # seed 0 blended (its last 3 runs) and seed 1's two cells
    assert resumed.new_trainers == 0
    cell = grid.Cell("blended", "full", 0)
    interrupted = g.defense_dir(workdir, cell, g.defenses[0], g.budgets[1])
    with open(os.path.join(interrupted, "summary.json")) as f:
        assert json.load(f)["resumed"] is True
    with open(os.path.join(interrupted, "curve.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [0, 4, 8]
    # Every run directory was started once (and the interrupted one resumed once).
    for c in g.cells():
        starts = [r for r in _rows(g.cell_dir(workdir, c)) if r["event"] == "start"]
        assert len(starts) == 1, c
    assert [(r["attack"], r["seed"]) for r in rows] == [
        ("badnets", 0), ("blended", 0), ("badnets", 1), ("blended", 1)
    ]  # fmt: skip


def _rows(path):
    with open(os.path.join(path, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow  # the grid: 4 cells, 16 defense runs, resumed; .ci/run runs it
def test_every_table_and_figure(finished):
    workdir, _, _, _ = finished
    g = grid.validate(grid_config())
    runs_ = read_csv(os.path.join(workdir, defense_report.RUNS_FILE))
    assert len(runs_) == 2 * 2 * 2 * 2 and tuple(runs_[0]) == defense_report.RUN_COLUMNS
    # One attacked model per cell, shared by every defense and budget: each run starts from
    # exactly the cell's trained model.
    for cell in g.cells():
        with open(os.path.join(g.cell_dir(workdir, cell), "summary.json")) as f:
            trained = json.load(f)
        own = [r for r in runs_ if (r["attack"], r["seed"]) == (cell.attack, str(cell.seed))]
        assert len(own) == 4
        for r in own:
            for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
                assert float(r[f"before_{key}"]) == trained[key]
    # table_defenses.md: a line per attack, the undefended column and 2 × 2 defense columns,
    # each entry mean ± sample std over the 2 seeds of defense_results.csv.
    with open(os.path.join(workdir, defense_report.TABLE_MD)) as f:
        lines = f.read().splitlines()
    assert lines[0] == (
        "| attack | undefended | finetune r=25% | finetune r=50% | fine_pruning r=25% | "
        "fine_pruning r=50% |"
    )
    line = next(x for x in lines if x.startswith("| blended |")).split(" | ")
    assert len(line) == 6 and all("(n=2)" in entry for entry in line[1:])
    column = ("blended", "fine_pruning", "r=50%")
    chosen = [r for r in runs_ if (r["attack"], r["defense"], r["budget"]) == column]
    asr = np.array([float(r["attack_success_rate"]) for r in chosen]) * 100
    oracle = np.array([float(r["oracle_asr_at_delta"]) for r in chosen]) * 100
    assert line[5].startswith(f"ASR {asr.mean():.1f} ± {asr.std(ddof=1):.1f} · acc ")
    assert f"· η {oracle.mean():.1f} ± {oracle.std(ddof=1):.1f} (n=2)" in line[5]
    aggregated = read_csv(os.path.join(workdir, defense_report.TABLE_CSV))
    assert len(aggregated) == 2 * (1 + 4)
    row = next(r for r in aggregated if (r["attack"], r["defense"], r["budget"]) == column)
    assert float(row["attack_success_rate_mean"]) == pytest.approx(asr.mean() / 100)
    assert row["n"] == "2"
    with open(os.path.join(workdir, defense_report.BB_TABLE)) as f:
        text = f.read()
    assert text.count("### Defender data") == 2 and text.count("| badnets | no defense |") == 2
    # The selection study's own report is still written (one line per attack), and the
    # figures: a trade-off figure per attack, a heat map per budget, the study's plots.
    with open(os.path.join(workdir, "table.md")) as f:
        assert "| badnets / full |" in f.read()
    for name in (
        "tradeoff_badnets.png",
        "tradeoff_blended.png",
        "heatmap_r0.25.png",
        "heatmap_r0.5.png",
        "retention.png",
    ):
        with open(os.path.join(workdir, name), "rb") as f:
            assert f.read(8) == PNG, name
    assert not os.path.exists(os.path.join(workdir, defense_report.DETECTION_TABLE))


@pytest.mark.slow  # the grid: 4 cells, 16 defense runs, resumed; .ci/run runs it
def test_a_defense_added_to_a_finished_grid_trains_no_attacked_model(finished, tmp_path):
    workdir, _, _, _ = finished
    copy = str(tmp_path / "g")
    shutil.copytree(workdir, copy)
    # A variant of finetune with its own learning rate; seed 0's cells only (the seed axis
    # may shrink too: seed 1's runs stay on disk, out of this invocation's tables).
    config = grid_config(defenses=("finetune", "fine_pruning", "finetune@lr=0.01"))
    config.sweep.seeds = (0,)
    with pytest.MonkeyPatch.context() as mp:
        counts = Counts(mp)
        sweep.run(config, copy)
    assert counts.cells == [] and counts.epochs == 0
    assert counts.tunes == 2 * 2  # the variant at both budgets on both cells, nothing else
    g = grid.validate(config)
    variant = g.defenses[2]
    assert variant.name == "finetune" and variant.overrides == (("lr", 0.01),)
    path = g.defense_dir(copy, g.cells()[0], variant, g.budgets[0])
    with open(os.path.join(path, "summary.json")) as f:
        assert json.load(f)["hparams"]["lr"] == 0.01
    with open(os.path.join(copy, defense_report.TABLE_MD)) as f:
        header = f.readline()
    assert "finetune@lr=0.01 r=25%" in header and "finetune@lr=0.01 r=50%" in header


@pytest.mark.slow  # the grid: 4 cells, 16 defense runs, resumed; .ci/run runs it
def test_a_detector_added_to_a_finished_grid_runs_only_detections(finished, tmp_path):
    workdir, _, _, _ = finished
    copy = str(tmp_path / "g")
    shutil.copytree(workdir, copy)
    config = grid_config()
    config.sweep.detectors = ("strip",)
    config.sweep.detector.strip.overlays = 16
    config.sweep.defender_budgets = (0.5,)  # the budget axis may shrink too
    with pytest.MonkeyPatch.context() as mp:
        counts = Counts(mp)
        sweep.run(config, copy)
    assert counts.cells == [] and counts.epochs == 0 and counts.tunes == 0
    assert counts.rebuilds == 4  # once per cell
    rows = read_csv(os.path.join(copy, defense_report.DETECTIONS_FILE))
    assert len(rows) == 4 and all(0 <= float(r["roc_auc"]) <= 1 for r in rows)
    with open(os.path.join(copy, defense_report.DETECTION_TABLE)) as f:
        lines = f.read().splitlines()
    assert "| attack | strip r=50% |" in lines
    line = next(x for x in lines if x.startswith("| blended |"))
    chosen = [r for r in rows if (r["attack"], r["budget"]) == ("blended", "r=50%")]
    auc = np.array([float(r["roc_auc"]) for r in chosen])
    assert line.split(" | ")[1].startswith(f"AUC {auc.mean():.3f} ± {auc.std(ddof=1):.3f} · FRR")


@pytest.mark.slow  # the grid: 4 cells, 16 defense runs, resumed; .ci/run runs it
def test_another_grid_is_refused(finished):
    workdir, _, _, _ = finished
    changed = grid_config()
    changed.sweep.defense.finetune.lr = 0.5
    with pytest.raises(runs.RunDirError, match=r"sweep\.defense\.finetune\.lr: 0\.001 -> 0\.5"):
        sweep.run(changed, workdir)
    # The hyper-parameters of a repair the grid does not run are not part of it.
    unused = grid_config()
    unused.sweep.defense.nad.lr = 0.5
    assert grid.differences(_recorded(workdir), unused.to_dict()) == []
    layout = grid_config()
    layout.sweep.attacks = ()
    lines = grid.differences(_recorded(workdir), layout.to_dict())
    assert any(line.startswith("sweep.attacks:") for line in lines)


def _recorded(workdir):
    with open(os.path.join(workdir, sweep.SWEEP_FILE)) as f:
        return json.load(f)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("defenses", ("prayer",), r"config\.sweep\.defenses: 'prayer' must be one of"),
        ("defenses", ("finetune@lr",), r"is not a defense"),
        ("defenses", ("finetune@speed=3",), r"finetune@speed=3: .*speed"),
        ("defenses", ("finetune", "finetune"), r"config\.sweep\.defenses: must be distinct"),
        ("defenses", ("grad_prune",), r"config\.sweep\.defender\.trigger_knowledge"),
        ("defender_budgets", (1,), r"images per class must be >= 2"),
        ("defender_budgets", (1.5,), r"a fraction r must be in \(0, 1\]"),
        ("defender_budgets", (0.05,), r"batch_size=16 \(finetune\) exceeds the defender's"),
        ("attacks", ("badnets", "moonlight"), r"config\.sweep\.attacks"),
        # 10% of 256 images is every one of class 0's: no clean one left for the defender.
        ("attacks", ("badnets", "cl_badnets"), r"r=25% with cl_badnets's poisons: class 0 gets 0"),
        ("detectors", ("strip", "tea_leaves"), r"config\.sweep\.detectors: must be distinct"),
        ("detectors", ("strip",), r"overlays=100 exceeds the defender's .* at r=25%"),
        ("shard", 2, r"config\.sweep\.shard: must be an integer in \[0, num_shards=2\)"),
    ],
)
def test_bad_grid_settings_are_refused_before_anything_is_written(field, value, message, tmp_path):
    c = grid_config()
    c.sweep.num_shards = 2
    c.sweep[field] = value
    with pytest.raises(ConfigError, match=message):
        sweep.run(c, str(tmp_path / "g"))
    assert not os.path.exists(tmp_path / "g")


def test_defense_runs_and_shares():
    g = grid.validate(grid_config(defenses=("finetune", "clp"), **{"data.num_train": 256}))
    # A data-free repair runs once per cell, whatever the budgets.
    assert [(d.label, b.dirname) for d, b in g.defense_runs()] == [
        ("finetune", "r0.25"), ("finetune", "r0.5"), ("clp", "none")
    ]  # fmt: skip
    for together in (1, 2):
        c = grid_config(defenses=())
        c.sweep.seeds, c.sweep.methods = (0, 1, 2, 3), ("full", "random")
        c.sweep.seeds_together, c.sweep.num_shards = together, 3
        shares = []
        for shard in range(3):
            c.sweep.shard = shard
            shares.append([cell for batch in grid.validate(c).batches() for cell in batch])
        everything = [cell for share in shares for cell in share]
        # Disjoint shares covering the grid, each holding whole (attack, seed group) groups.
        assert sorted(everything, key=str) == sorted(grid.validate(c).cells(), key=str)
        assert len(set(everything)) == len(everything) == 2 * 4 * 2
        for share in shares:
            groups = {(cell.attack, cell.seed // together) for cell in share}
            assert {(cell.attack, cell.seed // together, cell.method) for cell in share} == {
                (a, s, m) for a, s in groups for m in ("full", "random")
            }


@pytest.mark.slow  # the grid: 4 cells, 16 defense runs, resumed; .ci/run runs it
def test_a_shard_job_of_a_finished_grid_writes_the_report(finished, tmp_path, monkeypatch):
    workdir, _, _, _ = finished
    copy = str(tmp_path / "g")
    shutil.copytree(workdir, copy)
    for name in (defense_report.TABLE_MD, "table.md"):
        os.remove(os.path.join(copy, name))
    # What scripts/summarize.py --grid runs: the report from the recorded configuration.
    sweep.report_only(copy)
    for name in (defense_report.TABLE_MD, defense_report.TABLE_CSV, "table.md"):
        assert os.path.exists(os.path.join(copy, name)), name
    for name in (defense_report.TABLE_MD, "table.md"):
        os.remove(os.path.join(copy, name))
    c = grid_config()
    c.sweep.shard, c.sweep.num_shards = 1, 2
    sweep.run(c, copy)  # nothing left to train: the grid is complete, so it reports
    for name in (defense_report.TABLE_MD, defense_report.TABLE_CSV):
        with open(os.path.join(workdir, name)) as a, open(os.path.join(copy, name)) as b:
            assert a.read() == b.read()
    # While a shard job holds its lock, a job running the whole grid is refused, and so is a
    # job of another shard count.
    monkeypatch.setattr(sweep, "_LOCK_WAIT_S", 0.3)
    with holding(os.path.join(copy, sweep.SHARDS, "0-of-2")):
        with pytest.raises(runs.RunDirError, match="shard job 0-of-2 of this grid is running"):
            sweep.run(grid_config(), copy)
        c.sweep.shard, c.sweep.num_shards = 0, 3
        with pytest.raises(runs.RunDirError, match="shards of the same count"):
            sweep.run(c, copy)
    with holding(copy):  # an unsharded job's lock: a shard job waits, then gives up
        c.sweep.shard, c.sweep.num_shards = 1, 2
        with pytest.raises(runs.RunDirError, match="in use by another thread"):
            sweep.run(c, copy)


@contextlib.contextmanager
def holding(path):
    """Another job holding the lock of directory `path` (a thread, which the lock refuses as
    it refuses another process)."""
    held, release = threading.Event(), threading.Event()

    def job():
        with runs.lock_directory(path):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=job)
    thread.start()
    try:
        assert held.wait(30)
        yield
    finally:
        release.set()
        thread.join()


@pytest.mark.slow  # the grid: 4 cells, 16 defense runs, resumed; .ci/run runs it
def test_the_projection_of_a_grid_from_itself(finished):
    workdir, _, _, _ = finished
    config = grid_config()
    work = grid_cost.count(config)
    assert (work.cells, work.epochs, work.defense_runs) == (4, 4 * 3, 16)
    projected = grid_cost.project_measured(config, workdir)
    g = grid.validate(config)
    walls = 0.0
    for cell in g.cells():
        paths = [g.cell_dir(workdir, cell)]
        paths += [g.defense_dir(workdir, cell, d, b) for d, b in g.defense_runs()]
        for path in paths:
            with open(os.path.join(path, "summary.json")) as f:
                walls += json.load(f)["wall_seconds"]
    # To first order: the projection of the measured grid is its own time (every run's
    # compilation counted, as the first run of a process pays it), and 3 more epochs per
    # cell cost 3 measured epochs each.
    assert 0.5 < projected["total_s"] / walls < 2.0, (projected, walls)
    longer = grid_cost.project_measured(grid_config(**{"train.epochs": 6}), workdir)
    extra = longer["train_s"] - projected["train_s"]
    assert extra == pytest.approx(4 * 3 * projected["epoch_s"])


def test_the_study_configs_count_the_studies_work():
    # The studies' sizes (their docstrings' figures), and the same from the grids' axes:
    # every cell trains its epochs, adv_clean_label's cells a surrogate too, a selection
    # method's (attack, seed) one pretraining run; every cell gets each repair at each budget.
    for name, expected in (("pyp_grid", (15, 780, 225)), ("bb_grid", (54, 5850, 324))):
        path = os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
        work = grid_cost.count(config)
        assert (work.cells, work.epochs, work.defense_runs) == expected, name
        s = config.sweep
        pairs = len(s.attacks) * len(s.seeds)
        cells = pairs * len(s.methods)
        selecting = any(m != "full" for m in s.methods)
        epochs = (
            cells * config.train.epochs
            + len(s.seeds) * len(s.methods) * config.attack.surrogate_epochs  # adv_clean_label
            + (pairs * config.select.pretrain_epochs if selecting else 0)
        )
        assert "adv_clean_label" in s.attacks, name
        assert (cells, epochs, cells * len(s.defenses) * len(s.defender_budgets)) == expected
