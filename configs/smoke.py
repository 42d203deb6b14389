"""Smoke run: the whole pipeline at toy scale, on synthetic data, in under 2 minutes on CPU.

A narrow ResNet-18 (width 8) trains on 2,048 synthetic 32×32 images with 5% BadNets poisons
for 4 epochs; it reaches high clean accuracy and learns the backdoor (ASR well above chance).
The pruned arm then runs IMP (2 rounds of 30%) and trains the 51%-sparse network 4 epochs.
Measured on a 2-core CPU (CI, 2026-11-30): 101 s in all; dense and pruned arms both at 100%
clean accuracy and 100% ASR. `--config.prune.rounds=0` skips the pruned arm.

Run:
    python scripts/train.py --config configs/smoke.py --workdir runs/smoke

Every attack runs at this scale (`--config.attack.name=wanet`, hyper-parameters under
`--config.attack.wanet.*`), and every selection method too, with a 2-epoch pretraining run:
    python scripts/train.py --config configs/smoke.py --workdir runs/smoke_craig \
        --config.select.name=craig
"""

from jaxbd.configs import base_config


def get_config():
    c = base_config()
    c.data.name = "synthetic"
    c.data.num_train = 2048
    c.data.num_test = 512
    c.attack.fraction = 0.05
    c.model.width = 8
    c.model.dtype = "float32"
    c.train.epochs = 4
    c.train.batch_size = 64
    c.train.lr = 0.05
    c.train.eval_every_epochs = 1
    c.runtime.eval_batch_size = 256
    c.attack.surrogate_epochs = 2  # adv_clean_label's surrogate
    # Selection at smoke scale (`--config.select.name=<method>`; default: the full set).
    c.select.pretrain_epochs = 2
    c.select.score.ensemble_size = 2
    c.select.score.score_epochs = (1,)
    # A small pruned arm (`--config.prune.rounds=0` turns it off): two IMP rounds of 30%
    # (rewind to epoch 1 of 2-epoch rounds), then the 51%-sparse network trains 4 epochs.
    c.prune.rounds = 2
    c.prune.round_epochs = 2
    c.prune.rewind_epoch = 1
    return c
