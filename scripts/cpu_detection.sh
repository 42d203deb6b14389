#!/usr/bin/env bash
# The README's detection tables at CPU scale, on a local CIFAR-10 copy:
#
# 1. STRIP (scripts/detect.py, its defaults: 100 overlays from the defender's r = 1% clean
#    images, threshold at 1% FRR on the held-out ones) on three models trained on all 50,000
#    training images (ResNet-18 at width 8, fp32, 12 epochs): the BadNets model of
#    scripts/cpu_defenses.sh (2% poisons; trained here if missing) and a Blended and a WaNet
#    model at 10% poisons (their default triggers, target class 0).
# 2. Spectral Signatures and Activation Clustering are selection methods of the CPU reference
#    grid (scripts/cpu_grid.sh runs them beside the coresets, results/cpu_grid): the
#    training-set table reads their rows there.
# 3. The model zoo of configs/zoo.py (smoke-scale models on synthetic images; Neural Cleanse
#    and Calibrated Trigger Inversion on each; ROC AUC with a bootstrap interval), here with
#    ZOO_MODELS backdoored + ZOO_MODELS clean models (default 8 + 8, the config's) and Neural
#    Cleanse at 10 epochs (the config's 20); a backdoored model whose ASR stays under
#    zoo.min_asr is listed but not examined. About 3 minutes a model on two quiet cores. The
#    zoo's size may change between invocations: finished models and detections are read
#    back, so a larger zoo trains only the new models and rewrites the report.
#
#   export DATA=/path/to/cifar10
#   bash scripts/cpu_detection.sh       # re-running skips what has finished
#
# Runs go to runs/cpu_detection/; runs/cpu_defenses/source is shared with cpu_defenses.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:?set DATA to a local CIFAR-10 copy, e.g. DATA=/path/to/cifar10}
OUT=${OUT:-runs/cpu_detection}
SOURCE=${SOURCE:-runs/cpu_defenses/source}
STEPS=${STEPS:-strip zoo}
ZOO_MODELS=${ZOO_MODELS:-8}

train() {  # train <workdir> <overrides...>
  local workdir=$1
  shift
  if [[ -f $workdir/summary.json ]]; then return; fi
  python scripts/train.py --config configs/full.py --workdir "$workdir" \
    --config.data.path="$DATA" \
    --config.model.width=8 --config.model.dtype=float32 --config.train.epochs=12 \
    --config.train.eval_every_epochs=0 --config.prune.rounds=0 --config.runtime.progress=false \
    "$@"
}

strip() {  # strip <source> <name>
  if [[ -f $OUT/strip_$2/summary.json ]]; then echo "done: $OUT/strip_$2"; return; fi
  python scripts/detect.py --config configs/detect.py --workdir "$OUT/strip_$2" \
    --config.source="$1" --config.detector.name=strip --config.runtime.progress=false
}

for step in $STEPS; do
  case $step in
    strip)
      train "$SOURCE"
      strip "$SOURCE" badnets
      for attack in blended wanet; do
        train "$OUT/source_$attack" --config.attack.name=$attack --config.attack.fraction=0.1
        strip "$OUT/source_$attack" $attack
      done ;;
    zoo)
      python scripts/zoo.py --config configs/zoo.py --workdir "$OUT/zoo" \
        --config.zoo.backdoored="$ZOO_MODELS" --config.zoo.clean="$ZOO_MODELS" \
        --config.zoo.detector.neural_cleanse.epochs=10 --config.runtime.progress=false ;;
    *) echo "unknown step: $step" >&2; exit 2 ;;
  esac
done
