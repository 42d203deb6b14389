"""The reference study's Full row (SPEC §1): BadNets 2% on CIFAR-10, ResNet-18, 50 epochs.

Trains on the whole poisoned training set (no selection), SGD lr 0.1, momentum 0.9, weight
decay 5e-4, batch 128, cosine decay to 1e-5, crop + flip augmentation.

Run:
    python scripts/train.py --config configs/full.py --workdir runs/full \
        --config.data.path=../shared/data/cifar10

Expected (SPEC §8): clean accuracy about 94–95%, ASR about 100%. Runtime: about 37 minutes per
epoch on a 2-core CPU (measured, BENCHMARKS.md; interrupt and re-run the same command to
resume); on a GPU not yet measured (target: under a second per epoch on one H200, bf16).
"""

from jaxbd.configs import base_config


def get_config():
    return base_config()
