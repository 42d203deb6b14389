"""Where one-at-a-time and vmap-batched training part: the first step's gradient.

Replicate seeds trained together (`sweep.seeds_together`) perform the same computation as
seeds trained one at a time, but not bit for bit, and training amplifies the difference
(BENCHMARKS.md). This script computes the first train step's gradient of one model
(ResNet-18 at width 8 on synthetic CIFAR-shaped data, batch 32, crop + flip, as in the CPU
grid) several ways and prints, per way, the largest relative difference of any parameter
leaf from a reference:

- `compiled`: the engine's jitted single-model step (`Trainer.train_step`), from which
  the gradient is recovered as (θ₀ − θ₁)/lr − λθ₀;
- `eager`: the same step, not compiled;
- `vmapped`: the jitted step under `vmap` over two identical members (member 0);
- `perturbed ±1e-7`: the compiled loss gradient with the normalized inputs scaled by
  1 ± 10⁻⁷ (a rounding-sized change).

Each is compared with `eager`. Differences of order 10⁻⁶ are rounding; one way differing
far more from all the others marks a point where the float32 gradient jumps.

    python scripts/step_drift.py
"""

import json

import jax
import jax.numpy as jnp
import optax

from jaxbd.data import augment, make_synthetic
from jaxbd.models import resnet18
from jaxbd.train import CosineSchedule, Trainer, make_mesh
from jaxbd.train.epoch_order import epoch_order

LR, WEIGHT_DECAY, MEAN, STD = 0.05, 5e-4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def largest_relative_difference(tree, reference) -> tuple[float, str]:
    """(max |a − b| / max |b| over leaves, the leaf's path)."""
    return max(
        (float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))), jax.tree_util.keystr(path))
        for (path, a), b in zip(
            jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(reference), strict=True
        )
    )


def main() -> None:
    trainer = Trainer(
        resnet18(num_classes=10, width=8, dtype=jnp.float32),
        make_mesh(1),
        batch_size=32,
        eval_batch_size=32,
        momentum=0.9,
        weight_decay=WEIGHT_DECAY,
        mean=MEAN,
        std=STD,
        steps_per_call=1,
        progress=False,
    )
    splits = make_synthetic(num_train=1024, num_test=8, image_size=32, seed=0)
    data = trainer.put(splits.train.images, splits.train.labels)
    batch = epoch_order(jax.random.key(30), 1024, 32, 32)[0]
    images, labels, weights = data.images[batch], data.labels[batch], data.weights[batch]

    def fresh():
        return trainer.init_state(
            jax.random.key(10), (32, 32, 3), CosineSchedule.create(LR, 64), rng=jax.random.key(20)
        )

    params0 = fresh().params

    def implied_gradient(state):
        return jax.tree.map(
            lambda p0, p1: (p0 - p1) / LR - WEIGHT_DECAY * p0, params0, state.params
        )

    step = trainer.train_step
    grads = {
        "compiled": implied_gradient(jax.jit(step)(fresh(), images, labels, weights)[0]),
        "eager": implied_gradient(step(fresh(), images, labels, weights)[0]),
    }
    pair = trainer.stack([fresh(), fresh()])
    stepped, _ = jax.jit(jax.vmap(step, in_axes=(0, None, None, None)))(
        pair, images, labels, weights
    )
    grads["vmapped"] = implied_gradient(trainer.unstack(stepped, 0))

    state = fresh()
    key = jax.random.fold_in(state.rng, state.step)  # the step's augmentation key
    x = augment.normalize(augment.augment(key, images, crop_padding=4, flip=True), MEAN, STD)

    @jax.jit
    def loss_gradient(params, scale):
        def loss(p):
            variables = {"params": p, "batch_stats": state.batch_stats}
            (logits, _), _ = trainer.model.apply(
                variables, x * scale, train=True, mutable=["batch_stats"]
            )
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

        return jax.grad(loss)(params)

    for eps in (1e-7, -1e-7):
        grads[f"perturbed {eps:+.0e}"] = loss_gradient(params0, 1.0 + eps)
    for name, g in grads.items():
        difference, leaf = largest_relative_difference(g, grads["eager"])
        print(json.dumps({"way": name, "vs": "eager", "max_rel_diff": difference, "leaf": leaf}))


if __name__ == "__main__":
    main()
