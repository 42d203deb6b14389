"""Projects a grid's wall time: from a finished reduced run of it, or an assumed throughput.

    # from a reduced grid that ran to the end (same model and image size; see
    # scripts/device_checks.sh, step pyp_grid):
    python scripts/project_grid.py --config configs/pyp_grid.py --reduced runs/pyp_grid_reduced
    # from a training throughput (images/s), e.g. BENCHMARKS.md's CPU figure at width 64:
    python scripts/project_grid.py --config configs/pyp_grid.py --images_per_s 22.4

Prints the grid's work (cells, epochs over the training set, defense runs) and one JSON line
with the projected seconds (`jaxbd.pipeline.grid.cost` says how each is estimated). Config
overrides work as for scripts/sweep.py (`--config.sweep.seeds=(0,1)`).
"""

import json

from absl import app, flags
from ml_collections import config_flags

from jaxbd import cli
from jaxbd.pipeline.grid import cost as grid_cost

_CONFIG = config_flags.DEFINE_config_file("config", None, "The full grid's config file.")
_REDUCED = flags.DEFINE_string("reduced", None, "A finished reduced grid directory.")
_IPS = flags.DEFINE_float("images_per_s", None, "Assumed training throughput instead.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if (_REDUCED.value is None) == (_IPS.value is None):
        raise app.UsageError("give exactly one of --reduced and --images_per_s")
    config = _CONFIG.value
    if _REDUCED.value is not None:
        result = cli.run_or_exit(
            lambda: grid_cost.project_measured(config, _REDUCED.value), on_interrupt=""
        )
    else:
        result = cli.run_or_exit(
            lambda: grid_cost.project_throughput(config, _IPS.value), on_interrupt=""
        )
    w = result.pop("work")
    print(
        f"grid: {w.cells} cells ({w.epochs:g} epochs over {w.num_train} images in all), "
        f"{w.defense_runs} defense runs"
    )
    hours = {k.removesuffix("_s") + "_hours": v / 3600 for k, v in result.items()}
    print(json.dumps({"projected": True, **result, **hours}, sort_keys=True))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
