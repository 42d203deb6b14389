"""Evaluates a finished run's model — trained or defended — on its own trigger or another.

    python scripts/evaluate.py --config.source=runs/smoke
    python scripts/evaluate.py --config.source=runs/smoke/defenses/finetune \
        --config.attack.name=blended

`--config` defaults to configs/evaluate.py.

Reads the run; writes nothing unless `--config.output=FILE.json`.
"""

import json
import os

from absl import app
from ml_collections import config_flags

from jaxbd import cli
from jaxbd.pipeline import evaluate as evaluation

_DEFAULT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_DEFAULT, "evaluate.py"), "Evaluation config file."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.configure_logging()
    result = cli.run_or_exit(
        lambda: evaluation.run(_CONFIG.value), on_interrupt="nothing was written"
    )
    print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
