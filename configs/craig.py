"""CRAIG 50% weighted coreset, then the Full recipe on the subset.

CRAIG: Mirzasoleiman, Bilmes, Leskovec 2020, "Coresets for data-efficient training of machine
learning models"; definition in docs/methods.md, "CRAIG".

A 20-epoch pretraining run on the full poisoned set gives, for every example, the gradient
of the loss w.r.t. the last-layer pre-activation (softmax − onehot). Per class, greedy
facility location on those proxies picks half of the class; each pick is weighted by the
size of the cluster it represents, and training uses the weights as loss weights.

Run (the README's main command):
    python scripts/train.py --config configs/craig.py --workdir runs/craig \
        --config.data.path=/path/to/cifar10

Options: `--config.select.craig.greedy=exact|lazy|stochastic`,
`--config.select.craig.proxy=error|concat|outer` (outer: the full last-layer weight gradient,
through the kernel identity). Runtime: 20 pretraining epochs plus 50 epochs on half the data.

Every config trains a dense and a pruned arm: the pruned arm (IMP, `config.prune`: 3 rounds
of 30% on 10-epoch rounds rewound to epoch 1, then the 65.7%-sparse network for the full
schedule) adds 28 + 50 epochs on the same data; `--config.prune.rounds=0` skips it.
"""

from jaxbd.configs import base_config


def get_config():
    c = base_config()
    c.select.name = "craig"
    return c
