#!/usr/bin/env bash
# Every measurement still owed to an accelerator (BENCHMARKS.md, "GPU (H200) — not yet
# measured"), as one command of about 11 minutes on one H200, each step under its own time
# limit, logs under $OUT (one file per step, each ending in the step's JSON lines).
#
#   1. training throughput, ResNet-18 width 64, batch 128, 50k images: bf16 against the
#      PyTorch baseline, and fp32;
#   2. whether batching replicate seeds with vmap pays (`--members 4`: with `vmap_speedup`
#      > 1, `config.sweep.seeds_together` should default to all seeds on accelerators; it
#      is 1 today, what measured faster on the CPU);
#   3. CRAIG on all of CIFAR-10 (target: under 1 s) and EL2N/GraNd scoring at 50k in bf16;
#   4. every registered repair's plan and tuning steps at CIFAR scale (ResNet-18 width 64,
#      32×32, 4,500 defender tuning images = r of about 10%, bf16), and Neural Cleanse's
#      reverse-engineering with all labels in one program against one label at a time and
#      against the PyTorch loop (scripts/bench_defenses.py, scripts/torch_neural_cleanse.py);
#   5. a reduced configs/pyp_grid.py (Pick your Poison's grid: 1 attack, 1 seed, 2 epochs
#      over 50,000 CIFAR-shaped synthetic images, the five repairs at r = 1% with 100 tuning
#      steps), its wall time, and the full grid's wall time projected from it
#      (scripts/project_grid.py --reduced; jaxbd.pipeline.grid.cost says how). About 4
#      minutes: with it the script needs about 15 minutes, so run it in a session of its own
#      if the others' budget is tight (ONLY=pyp_grid bash scripts/device_checks.sh).
#   6. Optional, in a session of its own (ONLY=zoo_scale; skipped otherwise): Calibrated
#      Trigger Inversion and Neural Cleanse at the paper's scale, which the CPU cannot reach
#      (tests/defenses/test_cti.py measures why its Pivotal Tuning reference does not
#      separate small models): the configs/zoo.py protocol with ZOO_MODELS BadNets +
#      ZOO_MODELS clean ResNet-18s at width 64 on all of CIFAR-10 (10% poisons, ZOO_EPOCHS
#      epochs with crop and flip, bf16), the defender's r = 1% (500 clean images), CTI's
#      repair at Pivotal Tuning's 2000 steps; the report (auc.json, models.md, roc.png)
#      comes back under $OUT. It needs the CIFAR-10 copy
#      carried: `mkdir -p .data && cp /path/to/cifar10/{train,test}.tgz .data/` (with /.data/
#      in .git/info/exclude), carry [".whl", ".data"]; ZOO_DATA says where it is (.data).
#
# Preparation, once, on the machine that sends the working tree (the device has no
# internet): the wheels its image lacks, into .whl. torch is in the accelerator image
# already, and the PyTorch baseline is the repository's own scripts/torch_baseline.py.
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     ml-collections==1.1.0 apricot-select==0.6.0
# and run it with carry [".whl"]:
#   bash scripts/device_checks.sh
# A dry run of the script itself at toy sizes on the CPU:
#   N=512 WIDTH=4 SELECT_N=2000 DEFENSE_N=256 DEFENSE_STEPS=4 GRID_N=1024 GRID_TEST=256 \
#     GRID_BUDGET=0.25 GRID_STEPS=4 GRID_EXTRA="--config.sweep.defense.neural_cleanse.epochs=1
#     --config.sweep.defense.nad.teacher_steps=4 --config.sweep.defense.anp.iterations=4" \
#     bash scripts/device_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/device_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

OPTIONAL=" zoo_scale "  # steps that run only when ONLY names them
step() {  # step NAME SECONDS COMMAND...: runs COMMAND under a limit, logged to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  if [ -n "${ONLY:-}" ] && [ "$ONLY" != "$name" ]; then return; fi
  if [ -z "${ONLY:-}" ] && [[ $OPTIONAL == *" $name "* ]]; then return; fi
  echo "== $name ($limit s): $*" | tee "$OUT/$name.log"
  local start=$SECONDS
  timeout "$limit" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/$name.log"
  grep '^{' "$OUT/$name.log" || tail -5 "$OUT/$name.log"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import jax; print(jax.__version__, jax.devices())'; } >"$OUT/env.log" 2>&1
cat "$OUT/env.log"
N=${N:-50000} WIDTH=${WIDTH:-64} SELECT_N=${SELECT_N:-50000}
bench="python3 scripts/bench.py --width $WIDTH --batch 128 --n $N --epochs 3"
step train_bf16 150 $bench --precision bf16 --torch
step train_fp32 80 $bench --precision fp32
step members 150 $bench --precision bf16 --members 4
step craig 60 python3 scripts/bench_select.py --n "$SELECT_N"
step scores 60 python3 scripts/bench_select.py --sections scores --score_n "$SELECT_N" \
  --score_width "$WIDTH" --score_dtype bfloat16
DEFENSE_N=${DEFENSE_N:-4500} DEFENSE_STEPS=${DEFENSE_STEPS:-200}
step defenses 180 python3 scripts/bench_defenses.py --width "$WIDTH" --image_size 32 \
  --n "$DEFENSE_N" --batch 128 --steps "$DEFENSE_STEPS" --nc_epochs 2 --precision bf16 --torch
GRID_N=${GRID_N:-50000} GRID_TEST=${GRID_TEST:-10000} GRID_BUDGET=${GRID_BUDGET:-0.01}
GRID_STEPS=${GRID_STEPS:-100} GRID_EXTRA=${GRID_EXTRA:-}
rm -rf "$OUT/pyp_grid_reduced"
step pyp_grid 300 bash -c "python3 scripts/sweep.py --config configs/pyp_grid.py \
  --workdir $OUT/pyp_grid_reduced --config.data.name=synthetic \
  --config.data.num_train=$GRID_N --config.data.num_test=$GRID_TEST \
  --config.model.width=$WIDTH --config.train.epochs=2 --config.train.eval_every_epochs=0 \
  '--config.sweep.attacks=(\"badnets\",)' '--config.sweep.seeds=(0,)' \
  '--config.sweep.defender_budgets=($GRID_BUDGET,)' --config.sweep.defense.steps=$GRID_STEPS \
  --config.runtime.progress=false $GRID_EXTRA \
  && python3 scripts/project_grid.py --config configs/pyp_grid.py \
  --reduced $OUT/pyp_grid_reduced --config.model.width=$WIDTH $GRID_EXTRA"
ZOO_DATA=${ZOO_DATA:-.data} ZOO_MODELS=${ZOO_MODELS:-2} ZOO_EPOCHS=${ZOO_EPOCHS:-12}
ZOO_WORKDIR=${ZOO_WORKDIR:-/tmp/zoo_scale} ZOO_EXTRA=${ZOO_EXTRA:-}
# The zoo's run directories (checkpoints) stay outside $OUT; only the report comes back.
step zoo_scale 560 bash -c "python3 scripts/zoo.py --config configs/zoo.py \
  --workdir $ZOO_WORKDIR --config.data.name=cifar10 --config.data.path=$ZOO_DATA \
  --config.model.width=$WIDTH --config.model.dtype=bfloat16 --config.train.epochs=$ZOO_EPOCHS \
  --config.train.batch_size=128 --config.train.lr=0.1 --config.train.crop_padding=4 \
  --config.train.flip=true --config.attack.fraction=0.1 '--config.zoo.attacks=(\"badnets\",)' \
  --config.zoo.backdoored=$ZOO_MODELS --config.zoo.clean=$ZOO_MODELS \
  --config.zoo.defender.fraction=0.01 --config.zoo.detector.cti.repair_steps=2000 \
  --config.zoo.detector.cti.repair_batch_size=128 --config.zoo.detector.cti.batch_size=128 \
  --config.runtime.progress=false $ZOO_EXTRA \
  && cp $ZOO_WORKDIR/auc.json $ZOO_WORKDIR/models.md $ZOO_WORKDIR/roc.png $OUT/"
