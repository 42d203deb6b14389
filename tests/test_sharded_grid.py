"""A grid spread over jobs: two concurrent `scripts/sweep.py` processes with num_shards = 2
fill one directory, every cell and defense run exactly once, and their report equals that of
one process running the whole grid."""

import csv
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tiny grid: 2 attacks × 2 seeds of conftest.tiny_config's experiment (3 epochs, no
# intermediate evaluation), one defense at one budget. The config file imports conftest from
# this folder (which also asks JAX for four CPU devices; the runs use one).
CONFIG = textwrap.dedent(
    f"""
    import sys

    sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})

    from conftest import tiny_config
    from jaxbd.configs import sweep_section


    def get_config():
        c = tiny_config(**{{"train.epochs": 3, "train.eval_every_epochs": 0}})
        c.sweep = sweep_section(
            attacks=("badnets", "blended"), seeds=(0, 1), defenses=("finetune",),
            defender_budgets=(0.25,),
        )
        c.sweep.defense.steps = 8
        c.sweep.defense.eval_every = 4
        c.sweep.defense.finetune.batch_size = 16
        return c
    """
)


def sweep_command(config, workdir, *flags):
    return [
        sys.executable,
        os.path.join(REPO, "scripts", "sweep.py"),
        f"--config={config}",
        f"--workdir={workdir}",
        *flags,
    ]


def read(path):
    with open(path) as f:
        return f.read()


def without_seconds(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


@pytest.mark.slow  # about a minute on 2 cores: three processes, each compiling from scratch
def test_two_shard_jobs_fill_one_grid_like_one_process(tmp_path):
    config = tmp_path / "tiny_grid.py"
    config.write_text(CONFIG)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    whole = tmp_path / "whole"
    subprocess.run(sweep_command(config, whole), check=True, env=env, capture_output=True)

    sharded = tmp_path / "sharded"
    jobs = [
        subprocess.Popen(
            sweep_command(
                config, sharded, f"--config.sweep.shard={i}", "--config.sweep.num_shards=2"
            ),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [job.communicate(timeout=600)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs

    # Every cell and defense run was started exactly once, by one of the two jobs.
    cells = sorted(
        os.path.join(root)
        for root, _, files in os.walk(sharded / "cells")
        if "summary.json" in files
    )
    assert len(cells) == 4 + 4  # 4 cells, each with one defense run
    for run in cells:
        with open(os.path.join(run, "metrics.jsonl")) as f:
            starts = [r for r in map(json.loads, f) if r["event"] == "start"]
        assert [r["resumed"] for r in starts] == [False], run
    # Each job trained its own share, two of the four (attack, seed) groups.
    shares = [set(re.findall(r"cells (\S+): running", output)) for output in outputs]
    assert [len(share) for share in shares] == [2, 2] and not shares[0] & shares[1], outputs
    # The same tables as one process.
    for name in ("table_defenses.md", "table_defenses.csv", "table_backdoorbench.md"):
        assert read(sharded / name) == read(whole / name), name
    for name in ("defense_results.csv", "results.csv"):
        assert without_seconds(sharded / name) == without_seconds(whole / name), name
    assert read(sharded / "table.md").split("\n\n")[0] == read(whole / "table.md").split("\n\n")[0]
