"""The earlier study's "CRAIG", kept under its own name: gradient alignment.

Definition, and why it is not CRAIG, in docs/methods.md, "grad_align".

After a 20-epoch pretraining run, each class keeps the half of its examples whose last-layer
weight gradient is most aligned (cosine) with the class's summed unit gradients. A per-class
top-k with no weights: not a coreset method, but the ranking the study reported, which
removes most poisons.

Run:
    python scripts/train.py --config configs/grad_align.py --workdir runs/grad_align \
        --config.data.path=/path/to/cifar10

Every config trains a dense and a pruned arm: the pruned arm (IMP, `config.prune`: 3 rounds
of 30% on 10-epoch rounds rewound to epoch 1, then the 65.7%-sparse network for the full
schedule) adds 28 + 50 epochs on the same data; `--config.prune.rounds=0` skips it.
"""

from jaxbd.configs import base_config


def get_config():
    c = base_config()
    c.select.name = "grad_align"
    return c
