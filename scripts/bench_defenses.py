"""Cost of every registered repair at a fixed size, and Neural Cleanse's all-labels program.

For each repair in `jaxbd.defenses.REPAIRS` (or `--repairs`) on a freshly initialized CIFAR
ResNet-18 (`jaxbd.models.resnet18`), with defender images from `jaxbd.data.make_synthetic`
(or CIFAR-10 with `--data`): the seconds of its plan (cold and warm) and of `--steps` tuning
steps (`bench_repair` says exactly what is timed). Then Neural Cleanse's reverse-engineering
of all labels in one program against one label at a time (`bench_nc_programs`), and with
`--torch` against a PyTorch loop (`bench_torch`).

    python scripts/bench_defenses.py --width 8 --image_size 16 --n 256 --batch 64 --steps 30 \
        --nc_epochs 5 --precision fp32 --torch
    python scripts/bench_defenses.py --width 64 --n 4500 --batch 128 --steps 200 \
        --nc_epochs 10 --precision bf16 --torch        # an accelerator

Prints one JSON line per measurement, then a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import subprocess
import sys
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd import defenses
from jaxbd.attacks import badnets
from jaxbd.data import CIFAR10_MEAN, CIFAR10_STD, load_dataset, make_synthetic
from jaxbd.defenses import DefenderData, RepairContext, TuningPlan, Variables
from jaxbd.defenses.registry import make_repair
from jaxbd.models import MODELS, Classifier
from jaxbd.settings import InvalidSettingError
from jaxbd.train import CosineSchedule, Trainer, dense_mask, make_mesh
from jaxbd.train.epoch_order import largest_divisor_at_most

TORCH_NC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_neural_cleanse.py")
NUM_CLASSES = 10
BENCH_TRIGGER = badnets(target=0, size=3, color=(255, 255, 255), location="bottom_right")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--n", type=int, default=4500, help="defender tuning images")
    p.add_argument("--val", type=int, default=None, help="validation images (default n / 9)")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=200, help="tuning (and NAD teacher) steps")
    p.add_argument("--batch", type=int, default=128, help="every repair's batch size")
    p.add_argument("--nc_epochs", type=int, default=10, help="Neural Cleanse epochs per label")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--repairs", default=None, help="comma-separated (default: all registered)")
    p.add_argument("--data", default=None, help="a CIFAR-10 copy (default: synthetic images)")
    p.add_argument(
        "--steps_per_call", type=int, default=None, help="default: 1 on CPU, 32 otherwise"
    )
    p.add_argument(
        "--nc_compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Neural Cleanse all labels in one program vs one at a time",
    )
    p.add_argument("--torch", action="store_true", help="also the PyTorch Neural Cleanse loop")
    p.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="resnet18",
        help="tiny_cnn only for the script's smoke test (no PyTorch counterpart)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.torch and args.model != "resnet18":
        p.error("--torch compares the ResNet-18 only (scripts/torch_baseline.py's)")
    if args.repairs is None:
        args.repairs = list(defenses.REPAIRS)
    else:
        args.repairs = [r for r in args.repairs.split(",") if r]
    unknown = [r for r in args.repairs if r not in defenses.REPAIRS]
    if unknown:
        p.error(f"unknown repairs {unknown}; registered: {sorted(defenses.REPAIRS)}")
    if args.val is None:
        args.val = max(NUM_CLASSES, round(args.n / 9))
    if args.n < args.batch:
        p.error(f"--n ({args.n}) must hold at least one batch ({args.batch})")
    if args.steps < 1 or args.nc_epochs < 1:
        p.error("--steps and --nc_epochs must be >= 1")
    if args.data is not None and args.image_size != 32:
        p.error("CIFAR-10 images are 32×32: leave --image_size at 32 with --data")
    return args


def make_defender(args) -> DefenderData:
    """`n` tuning and `val` validation images: synthetic, or the start of CIFAR-10's training
    set (a class-stratified prefix), split by a seeded permutation."""
    total = args.n + args.val
    if args.data is None:
        train = make_synthetic(
            num_train=total,
            num_test=1,
            num_classes=NUM_CLASSES,
            image_size=args.image_size,
            seed=args.seed,
        ).train
    else:
        train = load_dataset({"name": "cifar10", "path": args.data, "train_limit": total}).train
    order = np.random.default_rng(args.seed).permutation(total)
    tune_idx, val_idx = np.sort(order[: args.n]), np.sort(order[args.n :])

    def subset(idx, what):
        return dataclasses.replace(
            train,
            images=train.images[idx],
            labels=train.labels[idx],
            source=f"{train.source} | {what}: {len(idx)} images",
        )

    return DefenderData(
        tune=subset(tune_idx, "tuning"),
        val=subset(val_idx, "validation"),
        tune_indices=tune_idx.astype(np.int32),
        val_indices=val_idx.astype(np.int32),
    )


def make_repair_for(name: str, args):
    """The registered repair with the benchmark's sizes: `steps`, `batch_size`, and where the
    repair has them, NAD's `teacher_steps` and ANP's mask `iterations` (= `--steps`),
    Neural Cleanse's `epochs` and `reverse_batch_size`, and `early_stop=False` (fixed work).
    Any other hyper-parameter keeps its default, and so does one of these that the repair
    rejects (CLP, data-free, must have `steps=0`)."""
    repair_class = defenses.REPAIRS[name]
    wanted = {
        "steps": args.steps,
        "batch_size": args.batch,
        "teacher_steps": args.steps,
        "iterations": args.steps,
        "epochs": args.nc_epochs,
        "reverse_batch_size": args.batch,
        "early_stop": False,
    }
    known = inspect.signature(repair_class).parameters
    hparams = {k: v for k, v in wanted.items() if k in known}
    while True:
        try:
            return make_repair(defenses.REPAIRS, name, hparams)
        except InvalidSettingError as e:
            # A repair that rejects one of the sizes (CLP: steps must be 0) keeps its own.
            if e.field not in hparams:
                raise
            del hparams[e.field]


def make_trainer(args, repair) -> Trainer:
    dtype = {"bf16": jnp.bfloat16, "fp32": jnp.float32}[args.precision]
    return Trainer(
        MODELS[args.model](num_classes=NUM_CLASSES, width=args.width, dtype=dtype),
        make_mesh(1),
        batch_size=repair.batch_size,
        eval_batch_size=args.batch,
        momentum=repair.momentum,
        weight_decay=repair.weight_decay,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        steps_per_call=args.steps_per_call,
        progress=False,
    )


def make_context(
    args, trainer: Trainer, defender: DefenderData, name: str, repair
) -> RepairContext:
    """The defender's data on the devices, a validation function, and — for a repair that
    assumes trigger knowledge (Grad-Prune) — BadNets' test-time trigger (a 3×3 white patch,
    target 0): a step costs the same whichever trigger the images carry."""
    val_images = trainer.replicate(defender.val.images)
    val_labels = np.asarray(defender.val.labels)

    def validate(params, batch_stats) -> float:
        logits, _ = trainer.predict_variables(params, batch_stats, val_images)
        return float(np.mean(np.asarray(jax.device_get(logits.argmax(-1))) == val_labels))

    return RepairContext(
        trainer=trainer,
        defender=defender,
        tune_data=trainer.put(defender.tune.images, defender.tune.labels),
        key=jax.random.fold_in(jax.random.key(args.seed), zlib.crc32(name.encode())),
        validate=validate,
        num_classes=NUM_CLASSES,
        trigger=BENCH_TRIGGER.test_fn if getattr(repair, "needs_trigger", False) else None,
    )


def initial_variables(args, trainer: Trainer) -> Variables:
    """A freshly initialized model stands in for the backdoored one (a step costs the same)."""
    state = trainer.init_state(
        jax.random.key(args.seed),
        (args.image_size, args.image_size, 3),
        CosineSchedule.create(0.1, 1),
        rng=jax.random.key(args.seed + 1),
    )
    return Variables(state.params, state.batch_stats, dense_mask(state.params))


def _ready(tree):
    return jax.block_until_ready(tree)


def bench_repair(name: str, args, defender: DefenderData) -> dict:
    """One repair's record.

    A `Trainer` with the repair's optimizer and batch, a `RepairContext` built by hand, then

    - the repair's `plan` twice: `plan_first_s` (compilation included) and `plan_s` (warm;
      `plan_compile_s` = first − warm). Fine-Pruning ranks channels and validates each
      pruning candidate, NAD trains its teacher and ANP optimizes its masks (`--steps` steps
      each), Neural Cleanse reverse-engineers every label (`--nc_epochs` epochs over the
      tuning images, early stop off); a plan's other work keeps the repair's defaults;
    - `jaxbd.defenses.tune` on the plan: first a warm-up chunk (one call of the compiled step
      function: `steps_per_call` steps, or the largest divisor of `--steps` below it), which
      compiles the repair's step variant and the validation pass, then `--steps` measured
      steps with `eval_every = steps` (two validation passes, step 0 and the end:
      `validate_s` each) and Δ = 1 (the budget never stops a run, so every repair does the
      same number of steps). `steps_per_s` and `images_per_s` are of the measured `tune_s`,
      validations included. A plan of 0 steps (Neural Cleanse flags nothing on an untrained
      model) is tuned for `--steps` anyway: its unlearning is plain fine-tuning, the same
      step. A repair that never tunes (CLP, which requires `steps=0`) is timed by its plan
      alone.
    """
    repair = make_repair_for(name, args)
    trainer = make_trainer(args, repair)
    ctx = make_context(args, trainer, defender, name, repair)
    variables = initial_variables(args, trainer)

    start = time.perf_counter()
    plan = repair.plan(ctx, variables)
    _ready(plan.variables)
    plan_first_s = time.perf_counter() - start
    start = time.perf_counter()
    plan = repair.plan(ctx, variables)
    _ready(plan.variables)
    plan_s = time.perf_counter() - start
    planned_steps = plan.steps

    start = time.perf_counter()
    ctx.validate(variables.params, variables.batch_stats)
    validate_s = time.perf_counter() - start
    steps = args.steps if repair.steps > 0 else 0  # a repair that never tunes (CLP)
    warm_s = tune_s = None
    if steps:
        chunk = largest_divisor_at_most(steps, trainer.steps_per_call)
        warm = defenses.tune(
            ctx, dataclasses.replace(plan, steps=chunk), eval_every=chunk, delta=1.0, desc=name
        )
        measured_plan: TuningPlan = dataclasses.replace(plan, steps=steps)
        result = defenses.tune(ctx, measured_plan, eval_every=steps, delta=1.0, desc=name)
        _ready(result.variables)
        warm_s, tune_s, steps = warm.seconds, result.seconds, result.steps
    record = {
        "measurement": "repair",
        "repair": name,
        "model": args.model,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "width": args.width,
        "image_size": args.image_size,
        "n": args.n,
        "val": args.val,
        "batch": trainer.batch_size,
        "precision": args.precision,
        "steps_per_call": trainer.steps_per_call,
        "plan_first_s": plan_first_s,
        "plan_s": plan_s,
        "plan_compile_s": plan_first_s - plan_s,
        "planned_steps": planned_steps,
        "warmup_steps": chunk if steps else 0,
        "warmup_tune_s": warm_s,
        "steps": steps,
        "tune_s": tune_s,
        "validate_s": validate_s,
        "steps_per_s": steps / tune_s if steps else None,
        "images_per_s": steps * trainer.batch_size / tune_s if steps else None,
    }
    if not steps:
        record["note"] = "the repair does not tune (steps = 0): its plan is all its work"
    elif planned_steps == 0:
        record["note"] = "the plan had 0 steps (nothing flagged); tuned plain for the budget"
    details = plan.details or {}
    for key in ("flagged_labels", "num_channels_pruned", "taps", "teacher_steps"):
        if key in details:
            record[key] = details[key]
    if "candidates" in details:
        record["pruning_candidates_validated"] = len(details["candidates"])
    return record


def bench_nc_programs(args, defender: DefenderData) -> dict:
    """Neural Cleanse's reverse-engineering: all labels in one program vs one at a time.

    `jaxbd.defenses.reverse_engineer` runs both ways with the same settings, early stop off
    so the work is fixed (`labels × nc_epochs × (n // batch)` Adam steps on stamped
    batches): all labels in one program (`vmap` over the labels) against one label at a time
    (`labels=[t]` in a Python loop, the program compiled once for one label), each timed
    warm after a compiling call; `loop_over_all` is the ratio.
    """
    # The repair's plan compiled the all-labels program already: start cold, so that each
    # way's first call includes its compilation.
    jax.clear_caches()
    repair = make_repair_for("neural_cleanse", args)
    trainer = make_trainer(args, repair)
    variables = initial_variables(args, trainer)
    images = trainer.replicate(defender.tune.images)
    common = dict(
        key=jax.random.key(args.seed + 7),
        epochs=args.nc_epochs,
        batch_size=args.batch,
        early_stop=False,
    )
    classifier = Classifier(
        trainer.model, variables.params, variables.batch_stats, mean=trainer.mean, std=trainer.std
    )

    def run(labels):
        return _ready(
            defenses.reverse_engineer(classifier, images, NUM_CLASSES, labels=labels, **common)
        )

    start = time.perf_counter()
    run(None)
    all_first_s = time.perf_counter() - start
    start = time.perf_counter()
    together = run(None)
    all_s = time.perf_counter() - start

    start = time.perf_counter()
    run([0])
    one_first_s = time.perf_counter() - start
    per_label = []
    start = time.perf_counter()
    norms = []
    for t in range(NUM_CLASSES):
        t0 = time.perf_counter()
        norms.append(float(run([t]).norms[0]))
        per_label.append(time.perf_counter() - t0)
    loop_s = time.perf_counter() - start
    steps_per_label = args.nc_epochs * (args.n // args.batch)
    images = NUM_CLASSES * steps_per_label * args.batch
    return {
        "measurement": "neural_cleanse reverse_engineer",
        "model": args.model,
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "width": args.width,
        "image_size": args.image_size,
        "n": args.n,
        "batch": args.batch,
        "precision": args.precision,
        "labels": NUM_CLASSES,
        "epochs": args.nc_epochs,
        "steps_per_label": steps_per_label,
        "all_labels_first_s": all_first_s,
        "all_labels_s": all_s,
        "all_labels_images_per_s": images / all_s,
        "one_label_first_s": one_first_s,
        "one_at_a_time_s": loop_s,
        "one_at_a_time_per_label_s": per_label,
        "one_at_a_time_images_per_s": images / loop_s,
        "loop_over_all": loop_s / all_s,
        # The same labels, keys and batches either way: the norms should agree closely.
        "max_norm_difference": float(
            np.max(np.abs(np.asarray(together.norms) - np.asarray(norms)))
        ),
    }


def bench_torch(args) -> dict:
    """A PyTorch loop one label at a time (`scripts/torch_neural_cleanse.py`: the same
    ResNet-18 as `scripts/torch_baseline.py`, the same steps, batch, tanh parametrization,
    Adam and cost), in a subprocess; `main` adds the ratios of its seconds to jaxbd's."""
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    cmd = [
        sys.executable,
        TORCH_NC,
        "--device",
        device,
        "--width",
        str(args.width),
        "--n",
        str(args.n),
        "--image_size",
        str(args.image_size),
        "--batch",
        str(args.batch),
        "--epochs",
        str(args.nc_epochs),
        "--labels",
        str(NUM_CLASSES),
        "--precision",
        args.precision,
        "--seed",
        str(args.seed),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(
            f"the PyTorch Neural Cleanse loop failed (exit {done.returncode}; it needs torch: "
            f'pip install -e ".[bench]"):\n{done.stderr[-2000:]}'
        )
    record = json.loads(done.stdout.strip().splitlines()[-1])
    record["measurement"] = "neural_cleanse torch one label at a time"
    return record


def table(records: list[dict]) -> str:
    lines = [
        "| repair | plan first s | plan s | planned steps | warm-up s | steps | tune s | "
        "steps/s | images/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        if r.get("measurement") != "repair":
            continue
        if r["steps"]:
            tuned = (
                f"{r['warmup_tune_s']:.2f} | {r['steps']} | {r['tune_s']:.2f} | "
                f"{r['steps_per_s']:.2f} | {r['images_per_s']:.0f}"
            )
        else:
            tuned = "– | 0 | – | – | –"
        lines.append(
            f"| {r['repair']} | {r['plan_first_s']:.2f} | {r['plan_s']:.2f} | "
            f"{r['planned_steps']} | {tuned} |"
        )
    nc = [r for r in records if r.get("measurement") == "neural_cleanse reverse_engineer"]
    torch_r = [r for r in records if r.get("measurement", "").startswith("neural_cleanse torch")]
    if nc:
        r = nc[0]
        lines += [
            "",
            f"Neural Cleanse, {r['labels']} labels × {r['steps_per_label']} steps of "
            f"{r['batch']} images:",
            "",
            "| how | first call s | seconds | images/s |",
            "| --- | ---: | ---: | ---: |",
            f"| jaxbd, all labels in one program | {r['all_labels_first_s']:.2f} | "
            f"{r['all_labels_s']:.2f} | {r['all_labels_images_per_s']:.0f} |",
            f"| jaxbd, one label at a time | {r['one_label_first_s']:.2f} | "
            f"{r['one_at_a_time_s']:.2f} | {r['one_at_a_time_images_per_s']:.0f} |",
        ]
        if torch_r:
            t = torch_r[0]
            lines.append(
                f"| PyTorch, one label at a time | {t['warmup_s']:.2f} (1 epoch) | "
                f"{t['seconds']:.2f} | {t['images_per_s']:.0f} |"
            )
        lines += ["", f"one at a time / all at once (jaxbd): {r['loop_over_all']:.2f}"]
        if torch_r:
            lines.append(
                f"PyTorch / jaxbd all at once: {torch_r[0]['seconds'] / r['all_labels_s']:.2f}; "
                f"PyTorch / jaxbd one at a time: "
                f"{torch_r[0]['seconds'] / r['one_at_a_time_s']:.2f}"
            )
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    started = time.perf_counter()
    defender = make_defender(args)
    records = []

    def emit(record):
        records.append(record)
        print(json.dumps(record), flush=True)

    for name in args.repairs:
        emit(bench_repair(name, args, defender))
    if args.nc_compare:
        nc = bench_nc_programs(args, defender)
        emit(nc)
        if args.torch:
            t = bench_torch(args)
            emit(t)
            emit(
                {
                    "comparison": "neural_cleanse torch_s / jax_s",
                    "torch_over_jax_all_labels": t["seconds"] / nc["all_labels_s"],
                    "torch_over_jax_one_at_a_time": t["seconds"] / nc["one_at_a_time_s"],
                    "width": args.width,
                    "precision": args.precision,
                    "batch": args.batch,
                }
            )
    print(table(records), flush=True)
    print(json.dumps({"bench_wall_s": time.perf_counter() - started}), file=sys.stderr)
    return records


if __name__ == "__main__":
    main()
