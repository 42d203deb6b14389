"""Evaluates a finished run's model — trained or defended — on its own trigger or another.

    python scripts/evaluate.py --config configs/evaluate.py --config.source=runs/smoke
    python scripts/evaluate.py --config configs/evaluate.py \
        --config.source=runs/smoke/defenses/finetune --config.attack.name=blended

Reads the run; writes nothing unless `--config.output=FILE.json`.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from jaxbd import cli
from jaxbd.pipeline import evaluation

_CONFIG = config_flags.DEFINE_config_file("config", None, "Evaluation config file.")
flags.mark_flags_as_required(["config"])


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
