"""Evaluate a finished run's model (trained or defended) on its trigger or another one.

    python scripts/evaluate.py --config configs/evaluate.py --config.source=runs/smoke
    python scripts/evaluate.py --config configs/evaluate.py \
        --config.source=runs/smoke/defenses/finetune --config.attack.name=blended

Prints clean accuracy, ASR (target class excluded), ASR over all images and robust accuracy;
`--config.output=FILE.json` also writes them. Nothing else is written.
"""

from jaxbd.configs import evaluate_config


def get_config():
    return evaluate_config()
