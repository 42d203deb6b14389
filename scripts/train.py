"""Runs one jaxbd experiment.

    python scripts/train.py --config configs/smoke.py --workdir runs/smoke
    python scripts/train.py --config configs/full.py --config.data.path=/path/to/cifar10

Any configuration field can be overridden with --config.<field>=<value>. Re-running the same
command resumes an interrupted run; a finished run directory is never overwritten. SIGTERM
(a preemption) saves a checkpoint after the current step and exits with status 143.

On several hosts every process runs the same command (docs/scaling.md); locally, e.g. two
processes of two CPU devices each (`bash scripts/multiprocess_smoke.sh` does this):

    JAX_NUM_CPU_DEVICES=2 python scripts/train.py --config configs/smoke.py \
        --workdir runs/smoke2 --config.runtime.coordinator_address=127.0.0.1:1234 \
        --config.runtime.num_processes=2 --config.runtime.process_id=0   # and =1
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from jaxbd import cli
from jaxbd.pipeline import experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config file name>).")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.configure_logging()
    cli.start_runtime(_CONFIG.value)  # jax.distributed before anything else touches JAX
    cli.configure_logging()  # again, now that this process knows whether it is process 0
    workdir = _WORKDIR.value or cli.default_workdir(flags.FLAGS["config"].config_filename)
    summary = cli.run_or_exit(
        lambda: experiment.run(_CONFIG.value, workdir),
        on_interrupt=f"re-run the same command to resume {workdir} from its last finished epoch",
        workdir=workdir,
        preemptible=True,
    )
    if cli.is_process_zero():
        print(json.dumps(summary, indent=2, sort_keys=True))
        print(f"wrote {os.path.join(workdir, 'summary.json')}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
