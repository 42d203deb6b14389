"""Repairs a finished training run's model with the defender's clean data.

    python scripts/defend.py --config configs/defend.py --config.source=runs/smoke \
        --config.defense.name=finetune --config.defense.steps=40

The source run is only read; the defense writes `config.json`, `metrics.jsonl`,
`curve.jsonl`, `curve.png` and `summary.json` to `--workdir` (default
`<source>/defenses/<name>`). Re-running the same command resumes an interrupted defense; a
finished one is never overwritten.
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

from jaxbd import cli
from jaxbd.pipeline import defend

_CONFIG = config_flags.DEFINE_config_file("config", None, "Defense config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: under the source).")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.configure_logging()
    config = _CONFIG.value
    workdir = _WORKDIR.value or (defend.default_workdir(config) if config.source else None)
    summary = cli.run_or_exit(
        lambda: defend.run(config, workdir),
        on_interrupt="re-run the same command to resume the defense",
        workdir=workdir,
    )
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"wrote {os.path.join(workdir, 'summary.json')}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
