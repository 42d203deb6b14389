"""BackdoorBench's protocol as one grid (Wu et al. 2022, "BackdoorBench: A Comprehensive
Benchmark of Backdoor Learning"): PreActResNet-18 on CIFAR-10, 10% of the training set
poisoned, the defender holding 5% of it, every defense jaxbd implements from BackdoorBench's
list, the leaderboard's C-Acc / ASR / RA / DER per attack × defense.

Attacks: `badnets` (3×3 white patch, bottom-right, as configs/bb_badnets.py), `blended`
(α = 0.2; jaxbd's pattern is generated noise, not BackdoorBench's Hello Kitty image), `sig`
and `adv_clean_label` (label-consistent: clean-label, 10% = every target-class image),
`low_frequency`, `wanet` (grid 4, strength 0.5), target class 0, images of every class
poisoned (BackdoorBench's all-to-one setting). Defenses: the post-training ones `finetune`
(FT), `fine_pruning` (FP), `nad`, `neural_cleanse` (NC), `anp`, `clp` (data-free) at their
defaults, and the training-set detectors Spectral Signatures and Activation Clustering as
selection methods (`sweep.methods`: the victim trains on what they keep, ε = 10%; each
scores a 20-epoch pretraining run of its seed, BackdoorBench a fully trained model), so
the table also shows every post-training defense on top of each sanitised training set.
Not implemented here: ABL, DBD, i-BAU and the other defenses of BackdoorBench's list. 3 seeds.
STRIP's detection AUC per attack: `--config.sweep.detectors='("strip",)'` (not counted in
the wall time below).
Training: SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine to 0 per step (BackdoorBench
steps per epoch), 100 epochs, batch 128, crop + flip; no pruned arm.

Run (resumable; `--config.sweep.shard=i --config.sweep.num_shards=n` for n jobs):
    python scripts/sweep.py --config configs/bb_grid.py --workdir runs/bb_grid \
        --config.data.path=/path/to/cifar10

The leaderboard: table_backdoorbench.md; the training-set detectors' precision and recall:
table_detection.md (`jaxbd.pipeline.grid.defense_report`).

Expected wall time (`python scripts/project_grid.py --config configs/bb_grid.py
--images_per_s R`, how: `jaxbd.pipeline.grid.cost`): 54 cells (6 attacks × 3 methods × 3
seeds) of 100 epochs, 18 shared 20-epoch pretraining runs and adv_clean_label's 10-epoch
surrogates (5,850 epochs over 50,000 images), and 324 defense runs. At R = 22.4 images/s
(this project's CPU, ResNet-18 width 64, BENCHMARKS.md) 3,627 hours of training and 902 of
defenses, about 189 days; at R = 50,000 (the H200 target) 1.6 hours of training and 0.4 of
defenses, 2.0 hours — a lower bound without the repairs' own planning (Neural Cleanse's
trigger search, ANP's mask optimization) and per-step overheads. Not yet measured on an
accelerator.
"""

from jaxbd.configs import base_config, sweep_section


def get_config():
    c = base_config()
    c.attack.fraction = 0.1
    c.attack.target = 0
    c.attack.exclude_target = False  # BackdoorBench poisons images of every class
    c.attack.badnets.size = 3
    c.attack.badnets.color = (255, 255, 255)
    c.attack.badnets.location = "bottom_right"
    c.attack.blended.alpha = 0.2
    c.model.name = "preact_resnet18"
    c.model.width = 64
    c.train.epochs = 100
    c.train.batch_size = 128
    c.train.lr = 0.01
    c.train.end_lr = 0.0  # CosineAnnealingLR's eta_min = 0
    c.train.momentum = 0.9
    c.train.weight_decay = 5e-4
    c.train.eval_every_epochs = 10
    c.prune.rounds = 0
    c.select.spectral.poison_rate = 0.1  # ε: the grid's poison rate
    c.sweep = sweep_section(
        attacks=("badnets", "blended", "sig", "adv_clean_label", "low_frequency", "wanet"),
        methods=("full", "spectral", "activation_clustering"),
        seeds=(0, 1, 2),
        defenses=("finetune", "fine_pruning", "nad", "neural_cleanse", "anp", "clp"),
        defender_budgets=(0.05,),
    )
    return c
