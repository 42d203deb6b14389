"""Runs the reference study's grid (selection methods × seeds, dense and pruned) and writes
its report: results.csv, table.md and plots.

    python scripts/sweep.py --config configs/paper.py --workdir runs/paper \
        --config.data.path=../shared/data/cifar10

Any field can be overridden (`--config.sweep.seeds=(0,1,2)`, `--config.train.epochs=10`).
Re-running the same command skips finished cells and resumes an interrupted one.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxbd import experiment, sweep
from jaxbd.data import DataError
from jaxbd.logging import RunDirError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file (with `sweep`).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Grid directory (default: runs/<config name>).")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    config_path = flags.FLAGS["config"].config_filename
    workdir = _WORKDIR.value or os.path.join(
        "runs", os.path.splitext(os.path.basename(config_path))[0]
    )
    try:
        sweep.run(_CONFIG.value, workdir)
    except (RunDirError, experiment.ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: re-run the same command to continue the grid in {workdir}",
            file=sys.stderr,
        )
        sys.exit(130)
    with open(os.path.join(workdir, "table.md")) as f:
        print(f.read())
    print(f"wrote {workdir}/results.csv, table.md and plots")


if __name__ == "__main__":
    app.run(main)
