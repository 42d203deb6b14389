"""The grid: cells run once, shared pretraining, skipping and continuing, the report."""

import csv
import json
import os
import shutil

import pytest
from conftest import tiny_config

from jaxbd.pipeline import experiment
from jaxbd.pipeline.grid import report, sweep
from jaxbd.runs import RunDirError


def grid_config(seeds=(0, 1), **overrides):
    c = tiny_config(
        **{
            "train.epochs": 1,
            "select.pretrain_epochs": 1,
            "select.score.score_epochs": (1,),
            "prune.rounds": 1,
            "prune.round_epochs": 2,
            "prune.rewind_epoch": 1,
            "prune.final_epochs": 1,
            **overrides,
        }
    )
    c.sweep = dict(methods=("full", "random", "grad_align"), seeds=seeds)
    return c


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("grid") / "g")
    config = grid_config()
    config.lock()  # as scripts/sweep.py receives it from config_flags
    rows = sweep.run(config, workdir)
    return workdir, rows


@pytest.mark.slow  # the selection grid run once for these; .ci/run runs them
def test_grid_outputs(grid):
    workdir, rows = grid
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("full", 0),
        ("random", 0),
        ("grad_align", 0),
        ("full", 1),
        ("random", 1),
        ("grad_align", 1),
    ]
    with open(os.path.join(workdir, "results.csv")) as f:
        written = list(csv.DictReader(f))
    assert len(written) == 6 and tuple(written[0]) == report.COLUMNS
    for row in rows:
        assert 0 <= row["clean_accuracy"] <= 1 and 0 <= row["pruned_clean_accuracy"] <= 1
        assert row["pruned_sparsity"] == pytest.approx(0.3, abs=0.01)
        assert row["num_selected"] == (256 if row["method"] == "full" else 128)
    with open(os.path.join(workdir, "table.md")) as f:
        text = f.read()
    for method in ("full", "random", "grad_align"):
        line = next(x for x in text.splitlines() if x.startswith(f"| {method} |"))
        assert line.count("(n=2)") == len(report.TABLE_COLUMNS)
    for name in report.PLOTS:
        with open(os.path.join(workdir, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # the selection grid run once for these; .ci/run runs them
def test_pretraining_is_shared_within_a_seed(grid):
    workdir, _ = grid
    # grad_align pretrains once per seed, in the grid's shared directory, not in its cell.
    runs = os.listdir(os.path.join(workdir, "pretrain"))
    assert len(runs) == 2
    assert not os.path.exists(
        os.path.join(sweep.cell_dir(workdir, "grad_align", 0), "checkpoints", "pretrain")
    )


@pytest.mark.slow  # the selection grid run once for these; .ci/run runs them
def test_rerun_skips_finished_cells_and_runs_only_new_ones(grid, monkeypatch):
    workdir, rows = grid
    calls = []
    original = experiment.run_group

    def counting(configs, paths):
        calls.extend((config.select.name, config.seed) for config in configs)
        return original(configs, paths)

    monkeypatch.setattr(experiment, "run_group", counting)
    again = sweep.run(grid_config(), workdir)
    assert calls == [] and again == rows
    # A third seed: only its three cells run.
    more = sweep.run(grid_config(seeds=(0, 1, 2)), workdir)
    assert calls == [(None, 2), ("random", 2), ("grad_align", 2)]
    assert len(more) == 9


@pytest.mark.slow  # the selection grid run once for these; .ci/run runs them
def test_seeds_trained_together_match_one_at_a_time(grid, tmp_path, monkeypatch):
    workdir, rows = grid
    calls = []
    original = experiment.run_group

    def counting(configs, paths):
        calls.append([(config.select.name, config.seed) for config in configs])
        return original(configs, paths)

    monkeypatch.setattr(experiment, "run_group", counting)
    config = grid_config()
    config.sweep.methods = ("random", "grad_align")
    config.sweep.seeds_together = 2
    # grad_align's cells are finished already (copied from the one-at-a-time grid): only
    # random's seeds run, both in one batched model.
    for seed in (0, 1):
        shutil.copytree(
            sweep.cell_dir(workdir, "grad_align", seed),
            sweep.cell_dir(str(tmp_path / "g"), "grad_align", seed),
        )
    # The same grid (methods, seeds and seeds_together may change between invocations).
    shutil.copy(os.path.join(workdir, sweep.SWEEP_FILE), tmp_path / "g" / sweep.SWEEP_FILE)
    together = sweep.run(config, str(tmp_path / "g"))
    assert calls == [[("random", 0), ("random", 1)]]
    one_at_a_time = {(r["method"], r["seed"]): r for r in rows}
    assert [(r["method"], r["seed"]) for r in together] == [
        ("random", 0), ("grad_align", 0), ("random", 1), ("grad_align", 1)
    ]  # fmt: skip
    for row in together:
        reference = one_at_a_time[row["method"], row["seed"]]
        # The same selection and sparsity exactly; after one epoch per phase the metrics are
        # still close: within 2 of 64 test images (longer training amplifies the different
        # rounding of batched kernels).
        for key in ("num_selected", "poison_retention", "pruned_sparsity"):
            assert row[key] == reference[key]
        for key in ("clean_accuracy", "pruned_clean_accuracy", "attack_success_rate"):
            assert row[key] == pytest.approx(reference[key], abs=0.04)
    with open(os.path.join(sweep.cell_dir(str(tmp_path / "g"), "random", 1), "summary.json")) as f:
        assert json.load(f)["trained_together"] == 2


@pytest.mark.slow  # the selection grid run once for these; .ci/run runs them
def test_a_different_grid_is_refused(grid, tmp_path):
    workdir, _ = grid
    with pytest.raises(RunDirError, match=r"train\.lr"):
        sweep.run(grid_config(**{"train.lr": 0.01}), workdir)
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(RunDirError, match="not a jaxbd sweep directory"):
        sweep.run(grid_config(), str(tmp_path))


@pytest.mark.parametrize(
    "methods, seeds, message",
    [
        (("full", "herding"), (0,), "config.sweep.methods"),
        (("full", "full"), (0,), "config.sweep.methods"),
        (("full",), (), "config.sweep.seeds"),
        (("full",), (0, 0), "config.sweep.seeds"),
        (("full",), (0,), "config.sweep.seeds_together"),
    ],
)
def test_bad_sweep_settings(methods, seeds, message, tmp_path):
    config = grid_config()
    config.sweep.methods, config.sweep.seeds = methods, seeds
    if message.endswith("seeds_together"):
        config.sweep.seeds_together = 0
    with pytest.raises(experiment.ConfigError, match=message.replace(".", r"\.")):
        sweep.run(config, str(tmp_path / "g"))
    assert not os.path.exists(tmp_path / "g")


def test_table_is_mean_and_sample_std():
    rows = [
        report.cell_row(
            "craig",
            seed,
            {
                "poison_retention": r,
                "clean_accuracy": a,
                "attack_success_rate": 1.0,
                "pruned": {"clean_accuracy": a - 0.01, "sparsity": {"total": 0.657}},
            },
        )
        for seed, (r, a) in enumerate([(0.1, 0.90), (0.2, 0.92), (0.3, 0.94)])
    ]
    line = report.table(rows).splitlines()[2]
    assert line == (
        "| craig | 20.0 ± 10.0 (n=3) | 92.00 ± 2.00 (n=3) | 91.00 ± 2.00 (n=3) | "
        "100.00 ± 0.00 (n=3) | – | 65.7 ± 0.0 (n=3) |"
    )
