"""Training throughput of jaxbd's engine on CIFAR-shaped data: one JSON line per measurement.

Measures exactly what `scripts/train.py` runs — the `Trainer` with on-device uint8 data,
on-device shuffling, crop + flip + normalize inside the step, SGD with momentum and weight
decay — on random uint8 images (throughput does not depend on pixel values). The first epoch
includes compilation and is reported separately; the timed figure is the median over the
following epochs. `epoch_s_50k` extrapolates to a 50,000-image epoch.

    python scripts/bench.py --width 64 --precision bf16 --batch 128 --n 50000 --epochs 3
    python scripts/bench.py --width 16 --precision fp32 --n 2048 --epochs 3 --torch

`--members M` also trains M models at once with `jax.vmap` (`Trainer.train_epoch_ensemble`,
as EL2N ensembles and replicate seeds can) and prints the time of one epoch of all M against
M one-at-a-time epochs (`vmap_speedup` > 1: batching the models is faster):

    python scripts/bench.py --width 8 --precision fp32 --n 2048 --epochs 3 --members 3

`--devices` sets the data-parallel device count (default: all). `--torch` also runs the
project's PyTorch baseline, `scripts/torch_baseline.py` (the same CIFAR ResNet-18; needs the
`bench` extra, `pip install -e ".[bench]"`), with the same settings in a subprocess, so the two
frameworks never share the device's memory, and prints its line and the ratio of the two.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.data.augment import CIFAR10_MEAN, CIFAR10_STD
from jaxbd.models import resnet18
from jaxbd.train import CosineSchedule, Trainer, make_mesh

TORCH_BASELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_baseline.py")


def make_trainer(args, mesh) -> Trainer:
    dtype = {"bf16": jnp.bfloat16, "fp32": jnp.float32}[args.precision]
    return Trainer(
        resnet18(num_classes=10, width=args.width, dtype=dtype),
        mesh,
        batch_size=args.batch,
        eval_batch_size=args.batch,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        steps_per_call=args.steps_per_call,
        progress=False,
    )


def random_data(args, trainer):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.n).astype(np.int32)
    return trainer.put(images, labels)


def bench_members(args, single: dict) -> dict:
    """One epoch of `args.members` models trained together with vmap vs one at a time."""
    mesh = make_mesh(args.devices)
    trainer = make_trainer(args, mesh)
    data = random_data(args, trainer)
    steps = trainer.steps_per_epoch(args.n)
    schedule = CosineSchedule.create(0.1, steps * args.epochs, end=1e-5)
    states = trainer.stack(
        [
            trainer.init_state(
                jax.random.key(m), (32, 32, 3), schedule, rng=jax.random.key(100 + m)
            )
            for m in range(args.members)
        ]
    )
    times = []
    for epoch in range(args.epochs):
        keys = jnp.stack([jax.random.key(1000 * m + epoch) for m in range(args.members)])
        states, stats, _ = trainer.train_epoch_ensemble(states, data, keys)
        times.append(stats[0].seconds)
    vmap_s = statistics.median(times[1:])
    sequential_s = args.members * single["epoch_s"]
    return {
        "measurement": "vmap over members vs one at a time",
        "members": args.members,
        "width": args.width,
        "batch": args.batch,
        "n": args.n,
        "precision": args.precision,
        "backend": jax.default_backend(),
        "vmap_first_epoch_s": times[0],
        "vmap_epoch_s": vmap_s,
        "sequential_epoch_s": sequential_s,
        "vmap_speedup": sequential_s / vmap_s,
    }


def bench_jax(args) -> dict:
    mesh = make_mesh(args.devices)
    trainer = make_trainer(args, mesh)
    data = random_data(args, trainer)
    steps = trainer.steps_per_epoch(args.n)
    state = trainer.init_state(
        jax.random.key(0),
        (32, 32, 3),
        CosineSchedule.create(0.1, steps * args.epochs, end=1e-5),
        rng=jax.random.key(1),
    )
    times = []
    for epoch in range(args.epochs):
        state, stats, _ = trainer.train_epoch(state, data, jax.random.key(epoch))
        times.append(stats.seconds)
    epoch_s = statistics.median(times[1:]) if len(times) > 1 else float("nan")
    images_per_s = steps * args.batch / epoch_s
    return {
        "framework": f"jax {jax.__version__}",
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "devices": int(mesh.devices.size),
        "width": args.width,
        "batch": args.batch,
        "n": args.n,
        "precision": args.precision,
        "steps_per_call": trainer.steps_per_call,
        "timed_epochs": len(times) - 1,
        "first_epoch_s": times[0],
        "compile_s_estimate": times[0] - epoch_s,
        "epoch_s": epoch_s,
        "images_per_s": images_per_s,
        "epoch_s_50k": 50_000 / images_per_s,
        "final_loss": stats.loss,
    }


def bench_torch(args) -> dict:
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    cmd = [
        sys.executable,
        TORCH_BASELINE,
        "--device",
        device,
        "--width",
        str(args.width),
        "--n",
        str(args.n),
        "--batch",
        str(args.batch),
        "--epochs",
        str(args.epochs),
        "--precision",
        args.precision,
    ]
    if args.torch_compile:
        cmd.append("--compile")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(
            f"the PyTorch baseline failed (exit {done.returncode}; it needs torch: "
            f'pip install -e ".[bench]"):\n{done.stderr[-2000:]}'
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["epoch_s_50k"] = 50_000 / result["images_per_s"]
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--n", type=int, default=50_000, help="images per epoch")
    p.add_argument("--epochs", type=int, default=3, help="including one warm-up epoch")
    p.add_argument("--devices", type=int, default=None, help="default: all")
    p.add_argument(
        "--steps-per-call", type=int, default=None, help="default: 1 on CPU, 32 otherwise"
    )
    p.add_argument(
        "--members", type=int, default=1, help="also time this many models trained with vmap"
    )
    p.add_argument("--torch", action="store_true", help="also run the PyTorch baseline")
    p.add_argument("--torch-compile", action="store_true", help="the baseline under torch.compile")
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch compiles and is not timed)")

    started = time.perf_counter()
    result = bench_jax(args)
    print(json.dumps(result), flush=True)
    if args.members > 1:
        print(json.dumps(bench_members(args, result)), flush=True)
    if args.torch:
        baseline = bench_torch(args)
        print(json.dumps(baseline), flush=True)
        print(
            json.dumps(
                {
                    "comparison": "jax_images_per_s / torch_images_per_s",
                    "ratio": result["images_per_s"] / baseline["images_per_s"],
                    "width": args.width,
                    "precision": args.precision,
                    "batch": args.batch,
                }
            ),
            flush=True,
        )
    print(json.dumps({"bench_wall_s": time.perf_counter() - started}), file=sys.stderr)


if __name__ == "__main__":
    main()
