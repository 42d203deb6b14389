"""EL2N by hand; GraNd against per-example gradients computed one at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbd.data import augment
from jaxbd.models import tiny_cnn
from jaxbd.select import el2n_scores, grand_scores, make_grand_fn
from jaxbd.train import init_variables

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_el2n_by_hand():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]], np.float32)
    labels = np.array([0, 1])
    # softmax: [0.5, 0.5] and [0.75, 0.25]; errors: [-0.5, 0.5] and [0.75, -0.75].
    np.testing.assert_allclose(
        el2n_scores(logits, labels), [np.sqrt(0.5), 0.75 * np.sqrt(2)], rtol=1e-6
    )


def test_grand_equals_one_at_a_time_gradients():
    model = tiny_cnn(num_classes=3, width=4, dtype=jnp.float32)
    params, batch_stats = init_variables(model, jax.random.key(0), (8, 8, 3))
    # Non-trivial running statistics, so inference mode matters.
    batch_stats = jax.tree.map(lambda x: x + 0.1, batch_stats)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 5).astype(np.int32)

    def loss(params, image, label):
        x = augment.normalize(image[None], MEAN, STD)
        logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, label[None])[0]

    expected = []
    for i in range(5):
        grads = jax.grad(loss)(params, images[i], labels[i])
        flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
        expected.append(np.linalg.norm(flat.astype(np.float64)))
    # Chunks of 2: the last chunk is padded and its padding dropped.
    scores = grand_scores(
        make_grand_fn(model, mean=MEAN, std=STD),
        params,
        batch_stats,
        images,
        labels,
        chunk_size=2,
    )
    assert scores.shape == (5,)
    np.testing.assert_allclose(scores, expected, rtol=2e-4)
