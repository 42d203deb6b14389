"""Runs the reference study's grid (selection methods × seeds, dense and pruned) and writes
its report: results.csv, table.md and plots.

    python scripts/sweep.py --config configs/paper.py --workdir runs/paper \
        --config.data.path=/path/to/cifar10

Any field can be overridden (`--config.sweep.seeds=(0,1,2)`, `--config.train.epochs=10`).
Re-running the same command skips finished cells and resumes an interrupted one.
`--config.sweep.seeds_together=5` trains each method's seeds as one vmap-batched model
(`jaxbd.pipeline.sweep`; default 1, one at a time).
"""

import os

from absl import app, flags
from ml_collections import config_flags

from jaxbd import cli
from jaxbd.pipeline import sweep

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
    )
    with open(os.path.join(workdir, "table.md")) as f:
        print(f.read())
    print(f"wrote {workdir}/results.csv, table.md and plots")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
