"""Trains a zoo of clean and backdoored models, runs the model-level detectors (Neural
Cleanse, Calibrated Trigger Inversion) on each, and writes their ROC AUC with a bootstrap
interval over models, the ROC curve and a per-model table.

    python scripts/zoo.py --config configs/zoo.py --workdir runs/zoo

Any field can be overridden (`--config.zoo.backdoored=4 --config.zoo.clean=4`,
`--config.zoo.detectors=(cti,)`, `--config.zoo.detector.cti.repair_steps=100`). Re-running
the same command skips finished models and detections and resumes an interrupted model
(`jaxbd.pipeline.zoo`).
"""

import os

from absl import app, flags
from ml_collections import config_flags

from jaxbd import cli
from jaxbd.pipeline import zoo

_CONFIG = config_flags.DEFINE_config_file("config", None, "Zoo config file (with `zoo`).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Zoo directory (default: runs/<config name>).")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.configure_logging()
    workdir = _WORKDIR.value or cli.default_workdir(flags.FLAGS["config"].config_filename)
    cli.run_or_exit(
        lambda: zoo.run(_CONFIG.value, workdir),
        on_interrupt=f"re-run the same command to continue the zoo in {workdir}",
        workdir=workdir,
    )
    with open(os.path.join(workdir, "models.md")) as f:
        print(f.read())
    print(f"wrote {workdir}/models.csv, models.md, auc.json and roc.png")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
