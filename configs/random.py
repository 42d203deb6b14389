"""Random 50% subset of the 2%-BadNets CIFAR-10 set, then the Full recipe.

Definition in docs/methods.md, "Random".

The subset is drawn per class from its own PRNG stream, so it keeps about half of the
poisons (an earlier study reused the poisoning seed and kept ~99.5%).

Run:
    python scripts/train.py --config configs/random.py --workdir runs/random \
        --config.data.path=/path/to/cifar10

Expected: clean accuracy about 91%, poison retention about 0.5, ASR about 100%.
Runtime: half of configs/full.py (no pretraining).

Every config trains a dense and a pruned arm: the pruned arm (IMP, `config.prune`: 3 rounds
of 30% on 10-epoch rounds rewound to epoch 1, then the 65.7%-sparse network for the full
schedule) adds 28 + 50 epochs on the same data; `--config.prune.rounds=0` skips it.
"""

from jaxbd.configs import base_config


def get_config():
    c = base_config()
    c.select.name = "random"
    return c
