"""EL2N 50% subset, then the Full recipe on the subset.

EL2N: Paul, Ganguli, Dziugaite 2021, "Deep learning on a data diet: finding important examples
early in training"; definition in docs/methods.md, "EL2N".

Four models pretrain on the full poisoned set (20-epoch schedule) and score every example
after epoch 10 by ‖softmax − onehot‖₂, averaged over the ensemble; each class keeps its
hardest half. `--config.select.variant=study` reproduces the earlier study instead: one
model, mean score over epochs 2–20, keep the easiest (which retains nearly all poisons).
`--config.select.name=grand` scores by per-example gradient norm instead (GraNd).

Run:
    python scripts/train.py --config configs/el2n.py --workdir runs/el2n \
        --config.data.path=/path/to/cifar10

Runtime: 4 × 10 pretraining epochs plus 50 epochs on half the data (≈ 65 full epochs).

Every config trains a dense and a pruned arm: the pruned arm (IMP, `config.prune`: 3 rounds
of 30% on 10-epoch rounds rewound to epoch 1, then the 65.7%-sparse network for the full
schedule) adds 28 + 50 epochs on the same data; `--config.prune.rounds=0` skips it.
"""

from jaxbd.configs import base_config


def get_config():
    c = base_config()
    c.select.name = "el2n"
    return c
