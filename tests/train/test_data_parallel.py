"""One train step on 1 device and on 4 (fake CPU) devices gives the same parameters.

The engine splits the global batch over a 1-D mesh with `jit` + `NamedSharding`; BatchNorm
statistics and gradients are reduced over the whole global batch, so the result must match
single-device training up to floating-point summation order.

The model is the tiny test network (convolutions, BatchNorm, a dense head: what sharding
touches), which agrees within 5e-8 after two steps at lr 0.1 in every pairing (one or four
devices, one step per call or both in one scanned call). A ResNet-18 at width 4 runs 3×
slower and, under jax 0.10.2's XLA:CPU, its scanned four-device call lands 4e-5 away after
the second step while every other pairing agrees within 1e-6 and its gradients agree within
7e-6 (convolution numerics inside a loop body, amplified by that step's state; at lr 0.02 it
agrees within 3e-7).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.data import make_synthetic
from jaxbd.models import tiny_cnn
from jaxbd.train import CosineSchedule, Trainer, make_mesh

MODEL = tiny_cnn(num_classes=10, width=8)


def _train(num_devices, steps=2):
    splits = make_synthetic(num_train=64, num_test=8, image_size=16, seed=3)
    trainer = Trainer(
        MODEL,
        make_mesh(num_devices),
        batch_size=32,
        eval_batch_size=32,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        steps_per_call=steps,
        progress=False,
    )
    data = trainer.put(splits.train.images, splits.train.labels)
    state = trainer.init_state(
        jax.random.key(0), (16, 16, 3), CosineSchedule.create(0.1, 10), rng=jax.random.key(1)
    )
    state, stats, _ = trainer.train_epoch(state, data, jax.random.key(2))
    logits, _ = trainer.predict(state, splits.test.images)
    devices_used = len(jax.tree.leaves(state.params)[0].sharding.device_set)
    assert devices_used == num_devices
    return jax.device_get((state.params, state.batch_stats, state.opt_state)), stats, logits


def test_one_and_four_devices_agree():
    assert len(jax.devices()) >= 4, "conftest.py should provide 4 CPU devices"
    (p1, s1, o1), stats1, logits1 = _train(1)
    (p4, s4, o4), stats4, logits4 = _train(4)
    chex.assert_trees_all_close(p1, p4, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(s1, s4, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(o1, o4, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats1.loss, stats4.loss, rtol=1e-5)
    np.testing.assert_allclose(logits1, logits4, rtol=1e-4, atol=1e-4)
    # Training moved the parameters (so agreement is not trivial).
    init = jax.device_get(
        MODEL.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)["params"]
    )
    assert not np.allclose(init["head"]["kernel"], p1["head"]["kernel"])
