"""Runs a study grid — attacks × selection methods × seeds, each cell one attacked model (dense
and pruned arms), every defense × defender budget applied to each model — and writes its
report: results.csv, table.md and plots; with defenses table_defenses.md/.csv,
table_backdoorbench.md and the trade-off and heat-map figures.

    python scripts/sweep.py --config configs/paper.py --workdir runs/paper \
        --config.data.path=/path/to/cifar10
    python scripts/sweep.py --config configs/pyp_grid.py --workdir runs/pyp_grid \
        --config.data.path=/path/to/cifar10

Any field can be overridden (`--config.sweep.seeds=(0,1,2)`, `--config.train.epochs=10`,
`--config.sweep.defenses='("finetune","nad")'`). Re-running the same command skips finished
cells and defense runs and resumes an interrupted one; new axis entries run only what is new.
`--config.sweep.seeds_together=5` trains each method's seeds as one vmap-batched model
(default 1, one at a time). `--config.sweep.shard=i --config.sweep.num_shards=n` runs job i's
share of the grid, so n jobs (e.g. a SLURM job array) fill one directory; the last to finish
writes the report, or `python scripts/summarize.py --grid WORKDIR` does
(`jaxbd.pipeline.grid.sweep`).
"""

import os

from absl import app, flags
from ml_collections import config_flags

from jaxbd import cli
from jaxbd.pipeline.grid import defense_report, sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file (with `sweep`).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Grid directory (default: runs/<config name>).")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.configure_logging()
    workdir = _WORKDIR.value or cli.default_workdir(flags.FLAGS["config"].config_filename)
    cli.run_or_exit(
        lambda: sweep.run(_CONFIG.value, workdir),
        on_interrupt=f"re-run the same command to continue the grid in {workdir}",
        workdir=workdir,
        preemptible=True,  # a SIGTERM stops a cell's training at the next step, saved
    )
    shown = []
    for name in ("table.md", defense_report.TABLE_MD):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            with open(path) as f:
                print(f.read())
            shown.append(name)
    if shown:
        print(f"wrote {workdir}/{', '.join(shown)} (and the CSVs and figures beside them)")
    else:
        print(f"this job's share of {workdir} is done; other jobs' cells are not finished yet")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
