"""A defense's hyper-parameter sweep run as one vmapped program against one run at a time.

The grid can hold several configurations of one repair that differ only in a hyper-parameter
(`sweep.defenses=("finetune@lr=0.001", "finetune@lr=0.01", ...)`). This times the tuning such
a sweep is made of — fine-tuning one backdoored model on the defender's images at K learning
rates — two ways, on a freshly initialized ResNet-18 (a step costs the same on a backdoored
one) and random uint8 images of CIFAR's shape:

- `one at a time`: K runs of `Trainer.train_steps` (what the grid does: each defense run is
  its own program, compiled once and reused);
- `vmapped`: the K models stacked and trained as one `vmap`-batched program
  (`Trainer.train_epoch_ensemble` on the shared defender data; each member's learning rate
  lives in its own schedule, so the members differ only in data — the schedule — not in code).

Both train K × `--steps` steps of `--batch` images; each is run once untimed first (its
compilation) and then timed. One JSON line: seconds and images/s of each, and `vmap_speedup`
(one-at-a-time seconds / vmapped seconds; > 1: the vmapped sweep is faster).

    python scripts/bench_sweep_vmap.py --width 8 --n 450 --batch 128 --steps 30 --members 4
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.data.augment import CIFAR10_MEAN, CIFAR10_STD
from jaxbd.models import resnet18
from jaxbd.train import CosineSchedule, Trainer, make_mesh


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--n", type=int, default=450, help="defender tuning images")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="steps per configuration")
    parser.add_argument("--members", type=int, default=4, help="K learning rates")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    dtype = {"bf16": jnp.bfloat16, "fp32": jnp.float32}[args.precision]
    trainer = Trainer(
        resnet18(num_classes=10, width=args.width, dtype=dtype),
        make_mesh(),
        batch_size=args.batch,
        eval_batch_size=args.batch,
        momentum=0.9,
        weight_decay=0.01,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        progress=False,
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, args.n).astype(np.int32)
    data = trainer.put(images, labels)
    lrs = [1e-3 * 3**k for k in range(args.members)]
    spe = trainer.steps_per_epoch(args.n)
    epochs = -(-args.steps // spe)  # the vmapped side trains whole epochs of the shared data
    steps = epochs * spe

    def states():
        base = trainer.init_state(
            jax.random.key(0),
            (32, 32, 3),
            CosineSchedule.create(lrs[0], steps),
            rng=jax.random.key(1),
        )
        return [
            trainer.new_state(
                jax.tree.map(jnp.copy, base.params),  # each state's buffers are donated
                jax.tree.map(jnp.copy, base.batch_stats),
                CosineSchedule.create(lr, steps, end=lr),  # constant, as a repair's default
                rng=jax.random.key(2 + m),
            )
            for m, lr in enumerate(lrs)
        ]

    def one_at_a_time():
        start = time.perf_counter()
        for m, state in enumerate(states()):
            state, _ = trainer.train_steps(
                state, data, jax.random.key(10 + m), start=0, steps=steps
            )
            jax.block_until_ready(state.params)
        return time.perf_counter() - start

    def vmapped():
        stacked = trainer.stack(states())
        keys = jnp.stack([jax.random.key(10 + m) for m in range(args.members)])
        start = time.perf_counter()
        for epoch in range(epochs):
            stacked, _, _ = trainer.train_epoch_ensemble(
                stacked, data, jax.vmap(lambda k, e=epoch: jax.random.fold_in(k, e))(keys)
            )
        jax.block_until_ready(stacked.params)
        return time.perf_counter() - start

    first = {"one_at_a_time": one_at_a_time(), "vmapped": vmapped()}  # compiles
    timed = {"one_at_a_time": one_at_a_time(), "vmapped": vmapped()}
    images_total = args.members * steps * args.batch
    print(
        json.dumps(
            {
                "bench": "sweep_vmap",
                "width": args.width,
                "n": args.n,
                "batch": args.batch,
                "members": args.members,
                "steps_per_member": steps,
                "precision": args.precision,
                "backend": jax.default_backend(),
                **{f"{k}_first_s": round(v, 2) for k, v in first.items()},
                **{f"{k}_s": round(v, 3) for k, v in timed.items()},
                **{f"{k}_images_per_s": round(images_total / v, 1) for k, v in timed.items()},
                "vmap_speedup": round(timed["one_at_a_time"] / timed["vmapped"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
