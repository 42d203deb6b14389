"""BackdoorBench's BadNets attack training on CIFAR-10 with PreActResNet-18.

What it is for: a backdoored model trained the way BackdoorBench (Wu et al. 2022,
"BackdoorBench: A Comprehensive Benchmark of Backdoor Learning") trains its leaderboard's
BadNets models, so that jaxbd's clean accuracy, ASR and the defenses run on it
(`scripts/defend.py --config.source=runs/bb_badnets ...`) can be set beside BackdoorBench's
published numbers. Recipe: PreActResNet-18 (`jaxbd.models.preact_resnet`), SGD lr 0.01,
momentum 0.9, weight decay 5e-4, cosine decay to 0, 100 epochs, batch 128, random crop and
horizontal flip; 10% of the training set poisoned, drawn from all classes (target-class
images included), relabelled to class 0; the trigger is a 3×3 white patch in the
bottom-right corner. No coreset selection and no pruned arm: only the attack training.

Differences that remain: jaxbd's cosine schedule decays per step (BackdoorBench's
CosineAnnealingLR steps per epoch), and the poison draw and augmentation streams are jaxbd's.

Run:
    python scripts/train.py --config configs/bb_badnets.py --workdir runs/bb_badnets \
        --config.data.path=/path/to/cifar10

100 epochs over 50,000 images: a job for an accelerator.
"""

from jaxbd.configs import base_config


def get_config():
    c = base_config()
    c.attack.name = "badnets"
    c.attack.fraction = 0.1
    c.attack.target = 0
    c.attack.exclude_target = False  # BackdoorBench poisons images of every class
    c.attack.badnets.size = 3
    c.attack.badnets.color = (255, 255, 255)
    c.attack.badnets.location = "bottom_right"
    c.model.name = "preact_resnet18"
    c.model.width = 64
    c.train.epochs = 100
    c.train.batch_size = 128
    c.train.lr = 0.01
    c.train.end_lr = 0.0  # CosineAnnealingLR's eta_min = 0
    c.train.warmup_epochs = 0
    c.train.momentum = 0.9
    c.train.weight_decay = 5e-4
    c.train.crop_padding = 4
    c.train.flip = True
    c.train.eval_every_epochs = 10
    c.prune.rounds = 0  # no pruned arm: the attack training only
    return c
