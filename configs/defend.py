"""Repair a trained run: Pick your Poison's CIFAR-10 defender (r = 1% of the training set).

    python scripts/defend.py --config configs/defend.py --config.source=runs/full \
        --config.defense.name=pivotal_tuning

`source` is a finished `scripts/train.py` run directory; its own configuration rebuilds the
same poisoned data and triggered test set, and its final dense (or, with
`--config.source_arm=pruned`, pruned) checkpoint is the model defended. The source run is
only read; results go to `<source>/defenses/<name>` unless `--workdir` says otherwise.

Every repair takes two common overrides: `--config.defense.steps=N` (the step budget) and
`--config.defense.eval_every=K` (a trade-off-curve row every K steps); its own
hyper-parameters are under `--config.defense.<name>.*` (defaults: Pick your Poison's
grid-searched CIFAR-10 values at r = 1%). A smoke-scale model defends in seconds:

    python scripts/train.py --config configs/smoke.py --workdir runs/smoke
    python scripts/defend.py --config configs/defend.py --config.source=runs/smoke \
        --config.defense.name=finetune --config.defense.steps=40 --config.defense.eval_every=10
"""

from jaxbd.configs import defend_config


def get_config():
    return defend_config()
