"""Forgetting-score 50% subset, then the Full recipe on the subset.

Forgetting events: Toneva et al. 2019, "An empirical study of example forgetting during deep
neural network learning"; definition in docs/methods.md, "Forgetting".

A 20-epoch pretraining run on the full poisoned set records, for every presentation of every
example, whether its augmented view was classified correctly; forgetting events are
correct → incorrect transitions and never-learned examples count as most forgettable. Each
class keeps its most forgotten half (ties broken randomly). `--config.select.variant=study`
reproduces the earlier study: one check per epoch, never-learned scored 0, keep easy.

Run:
    python scripts/train.py --config configs/forgetting.py --workdir runs/forgetting \
        --config.data.path=/path/to/cifar10

Runtime: 20 pretraining epochs plus 50 epochs on half the data (≈ 45 full epochs).

Every config trains a dense and a pruned arm: the pruned arm (IMP, `config.prune`: 3 rounds
of 30% on 10-epoch rounds rewound to epoch 1, then the 65.7%-sparse network for the full
schedule) adds 28 + 50 epochs on the same data; `--config.prune.rounds=0` skips it.
"""

from jaxbd.configs import base_config


def get_config():
    c = base_config()
    c.select.name = "forgetting"
    return c
