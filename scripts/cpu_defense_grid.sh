#!/usr/bin/env bash
# The attack × defense grid (configs/pyp_grid.py) at the scale this 2-core CPU allows in about
# an hour, for results/defense_grid_cpu: a class-stratified 5,000 of a CIFAR-10 copy's
# training images and 2,000 of its test images, ResNet-18 at width 8 (fp32), 14 epochs at
# batch 128 and lr 0.1, 9% poisons (450 images; the clean-label attacks poison 450 of the
# target class's 500, leaving the defender 50 clean ones) — × every repair that needs no trigger knowledge (finetune,
# fine_pruning, nad, neural_cleanse, pivotal_tuning, anp; clp data-free) × r = 5% and 10%
# (250 and 500 defender images, 10% held out) × 2 seeds, for the three attacks whose
# backdoors models of this size learn (badnets, cl_badnets, adv_clean_label; its surrogate 4
# epochs). The repairs' step budgets are cut to STEPS (default 100; their own: 1,000–2,000)
# with a curve row every STEPS/4, Neural Cleanse's trigger search to 5 epochs, NAD's teacher
# to STEPS steps, ANP's mask search to STEPS iterations: at their own budgets one cell's
# defenses alone would take over an hour here.
#
# Calibrated (results/defense_grid_cpu/README.md): at 5% poisons BadNets' seed 1 ended at
# 25.4% ASR (seed 0: 99.6%; the clean-label attacks 97.3-99.5%); at 10% every attack × seed
# learned its backdoor (98.8-99.9%), but the clean-label attacks then poison every image of
# the target class and the defender, who draws clean training images, gets none of it.
#
#   export DATA=/path/to/cifar10        # a local CIFAR-10 copy (any layout load_cifar10 reads)
#   bash scripts/cpu_defense_grid.sh     # the grid -> runs/defense_grid_cpu (resumable)
#   SMOKE=1 bash scripts/cpu_defense_grid.sh     # the same command at smoke scale, synthetic
#                                                # data (no DATA needed; runs/defense_grid_smoke)
#   PROJECT=1 bash scripts/cpu_defense_grid.sh   # a reduced run of it (synthetic images of the
#       # same size: 1 attack, 1 seed, 2 epochs, r = 5%, 20 steps) and the projected wall time
#       # of the full command (scripts/project_grid.py; runs/defense_grid_reduced)
#
# Set OUT, ATTACKS, SEEDS, BUDGETS, DEFENSES, EPOCHS, STEPS, FRACTION to override (e.g.
# DEFENSES='()' trains the attacked models only: the calibration runs).
set -euo pipefail
cd "$(dirname "$0")/.."
ATTACKS=${ATTACKS:-'("badnets","cl_badnets","adv_clean_label")'}
DEFENSES=${DEFENSES:-'("finetune","fine_pruning","nad","neural_cleanse","pivotal_tuning","anp","clp")'}
SEEDS=${SEEDS:-(0,1)}
BUDGETS=${BUDGETS:-(0.05,0.1)}
EPOCHS=${EPOCHS:-14}
STEPS=${STEPS:-100}
TRAIN=${TRAIN:-5000}
TEST=${TEST:-2000}
FRACTION=${FRACTION:-0.09}

if [[ -n ${SMOKE:-} ]]; then
  OUT=${OUT:-runs/defense_grid_smoke}
  ATTACKS='("badnets","cl_badnets")' SEEDS="(0,)" BUDGETS="(0.25,)" EPOCHS=2 STEPS=8
  DEFENSES='("finetune","clp")' TRAIN=1024 TEST=128
  DATA_FLAGS=(--config.data.name=synthetic --config.data.num_train=$TRAIN
    --config.data.num_test=$TEST --config.data.image_size=32)
elif [[ -n ${PROJECT:-} ]]; then
  OUT=${OUT:-runs/defense_grid_reduced}
  DATA_FLAGS=(--config.data.name=synthetic --config.data.num_train=$TRAIN
    --config.data.num_test=$TEST --config.data.image_size=32)
else
  OUT=${OUT:-runs/defense_grid_cpu}
  DATA=${DATA:?set DATA to a local CIFAR-10 copy (or SMOKE=1 for synthetic data)}
  DATA_FLAGS=(--config.data.path="$DATA" --config.data.train_limit=$TRAIN
    --config.data.test_limit=$TEST)
fi

grid_flags() {  # the grid's settings, from the variables above (each flag given once)
  local every=$(( STEPS / 4 > 0 ? STEPS / 4 : 1 ))
  printf '%s\n' \
    --config.model.width=8 --config.model.dtype=float32 \
    --config.attack.fraction="$FRACTION" --config.attack.surrogate_epochs=4 \
    --config.train.epochs="$EPOCHS" --config.train.eval_every_epochs=0 \
    --config.runtime.progress=false \
    "--config.sweep.attacks=$ATTACKS" "--config.sweep.defenses=$DEFENSES" \
    "--config.sweep.seeds=$SEEDS" "--config.sweep.defender_budgets=$BUDGETS" \
    --config.sweep.defense.steps="$STEPS" --config.sweep.defense.eval_every="$every" \
    --config.sweep.defense.neural_cleanse.epochs=5 \
    --config.sweep.defense.nad.teacher_steps="$STEPS" \
    --config.sweep.defense.anp.iterations="$STEPS"
}
mapfile -t FLAGS < <(grid_flags)

if [[ -n ${PROJECT:-} ]]; then
  # The full command's settings, but 1 attack, 1 seed, 2 epochs, one budget, 20 steps.
  mapfile -t REDUCED < <(ATTACKS='("badnets",)' SEEDS="(0,)" BUDGETS="(0.05,)" EPOCHS=2 \
    STEPS=20 grid_flags)
  python scripts/sweep.py --config configs/pyp_grid.py --workdir "$OUT" "${DATA_FLAGS[@]}" \
    "${REDUCED[@]}"
  python scripts/project_grid.py --config configs/pyp_grid.py --reduced "$OUT" \
    --config.data.train_limit="$TRAIN" --config.data.test_limit="$TEST" "${FLAGS[@]}"
  exit
fi
python scripts/sweep.py --config configs/pyp_grid.py --workdir "$OUT" "${DATA_FLAGS[@]}" \
  "${FLAGS[@]}"
