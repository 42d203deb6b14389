"""Runs a detector on a finished training run's (or defense's) model.

    python scripts/detect.py --config configs/detect.py --config.source=runs/smoke \
        --config.detector.name=strip

The source is only read; the detection writes `config.json`, `metrics.jsonl`, the
detector's figures and arrays (STRIP: `entropy.png`, `scores.npz`) and `summary.json` to
`--workdir` (default `<source>/detections/<detector>`). A finished detection is never
overwritten; an interrupted one is redone by re-running the same command.
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from jaxbd import cli
from jaxbd.pipeline import detect

_CONFIG = config_flags.DEFINE_config_file("config", None, "Detection config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: under the source).")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.configure_logging()
    config = _CONFIG.value
    workdir = _WORKDIR.value or (detect.default_workdir(config) if config.source else None)
    summary = cli.run_or_exit(
        lambda: detect.run(config, workdir),
        on_interrupt="re-run the same command to redo the detection",
        workdir=workdir,
    )
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"wrote {os.path.join(workdir, 'summary.json')}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
