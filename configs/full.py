"""The reference study's Full row: BadNets 2% on CIFAR-10, ResNet-18, 50 epochs.

The experiment is described in docs/methods.md, "The reference experiment"; BadNets is Gu,
Dolan-Gavitt, Garg 2017, "BadNets: identifying vulnerabilities in the machine learning model
supply chain".

Trains on the whole poisoned training set (no selection), SGD lr 0.1, momentum 0.9, weight
decay 5e-4, batch 128, cosine decay to 1e-5, crop + flip augmentation.

Run:
    python scripts/train.py --config configs/full.py --workdir runs/full \
        --config.data.path=/path/to/cifar10

Expected: clean accuracy about 94–95%, ASR about 100%. Runtime: about 37 minutes per
epoch on a 2-core CPU (measured, BENCHMARKS.md; interrupt and re-run the same command to
resume); on a GPU not yet measured (target: under a second per epoch on one H200, bf16).

Every config trains a dense and a pruned arm: the pruned arm (IMP, `config.prune`: 3 rounds
of 30% on 10-epoch rounds rewound to epoch 1, then the 65.7%-sparse network for the full
schedule) adds 28 + 50 epochs on the same data; `--config.prune.rounds=0` skips it.
"""

from jaxbd.configs import base_config


def get_config():
    return base_config()
