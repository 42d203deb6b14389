#!/usr/bin/env bash
# The reference grid (configs/paper.py's full, random, el2n, forgetting, craig, grad_align,
# and the training-set detectors spectral and activation_clustering as selection methods,
# each dense and pruned) at the scale a 2-core CPU allows in about an hour, as committed
# under results/cpu_grid: a class-stratified 4,000 of a CIFAR-10 copy's training images
# and 2,000 of its test images (the committed grid: a JPEG image-folder copy), ResNet-18 at
# width 8 in fp32. BadNets as in the study (7×7 red square → class 0) but on FRACTION = 10%
# of the images (400 poisons), calibrated so that the undefended model (full, dense) learns
# the backdoor in every seed: at 2% (80 poisons) it was not learned at this size (ASR 14%
# after 6 epochs on all 4,000); at 5% (200) it was a coin flip (seeds 0-4: 99.5-99.8% but
# 20.8% for seed 1); at 10%, full's dense arm alone (METHODS='("full",)' with
# --config.prune.rounds=0), seeds 0-4 reached 99.7-99.9%. The committed grid: SEEDS="(0,1,2)".
# Batch 32 at lr 0.05, 8 epochs per arm, a 3-epoch pretraining run (EL2N: 2-model ensemble
# scored after epoch 2), IMP with 2 rounds of 30% on 2-epoch rounds rewound to epoch 1 (51%
# sparsity), the final sparse network trained the full 8 epochs. Spectral Signatures'
# expected poison rate is 1/3, so that it removes 1.5·ε = 50% of every class: the coresets'
# budget.
#
#   export DATA=/path/to/cifar10       # required: a local CIFAR-10 copy (any layout
#                                      # jaxbd.data.load_cifar10 reads)
#   bash scripts/cpu_grid.sh            # writes runs/cpu_grid/{results.csv,table.md,*.png}
#
# Arguments after the script's name are passed on to scripts/sweep.py (more overrides).
# Re-running continues the grid (finished cells are skipped); more SEEDS run only the new
# cells. Set OUT, SEEDS (default "(0,1,2,3,4)"), METHODS (default: the eight above), FRACTION
# and SEEDS_TOGETHER (default 1) to override; e.g. the seed-batching measurement in BENCHMARKS.md:
#
#   OUT=runs/seeds_apart METHODS='("random",)' SEEDS="(0,1)" bash scripts/cpu_grid.sh
#   OUT=runs/seeds_together METHODS='("random",)' SEEDS="(0,1)" SEEDS_TOGETHER=2 \
#     bash scripts/cpu_grid.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:?set DATA to a local CIFAR-10 copy, e.g. DATA=/path/to/cifar10}
OUT=${OUT:-runs/cpu_grid}
SEEDS=${SEEDS:-(0,1,2,3,4)}
SEEDS_TOGETHER=${SEEDS_TOGETHER:-1}
METHODS=${METHODS:-'("full","random","el2n","forgetting","craig","grad_align","spectral","activation_clustering")'}
FRACTION=${FRACTION:-0.1}
python scripts/sweep.py --config configs/paper.py --workdir "$OUT" \
  --config.data.path="$DATA" \
  --config.data.train_limit=4000 \
  --config.data.test_limit=2000 \
  --config.attack.fraction="$FRACTION" \
  --config.model.width=8 \
  --config.model.dtype=float32 \
  "--config.sweep.seeds=$SEEDS" \
  "--config.sweep.seeds_together=$SEEDS_TOGETHER" \
  "--config.sweep.methods=$METHODS" \
  --config.select.spectral.poison_rate=0.3333 \
  --config.train.epochs=8 \
  --config.train.batch_size=32 \
  --config.train.lr=0.05 \
  --config.train.eval_every_epochs=0 \
  --config.select.pretrain_epochs=3 \
  --config.select.score.ensemble_size=2 \
  "--config.select.score.score_epochs=(2,)" \
  --config.prune.rounds=2 \
  --config.prune.round_epochs=2 \
  --config.prune.rewind_epoch=1 \
  --config.runtime.progress=false \
  "$@"
