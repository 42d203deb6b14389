"""The tiny test network: outputs, precision, parameter count, BatchNorm modes, intermediates."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.models import MODELS, TinyCNN, tiny_cnn


def _init(model, x):
    return model.init(jax.random.key(0), x, train=False)


def test_registry_and_constructor_keywords():
    assert MODELS["tiny_cnn"] is tiny_cnn
    # The same keywords the experiment passes to every registered model.
    model = MODELS["tiny_cnn"](num_classes=7, width=4, dtype=jnp.float32)
    assert isinstance(model, TinyCNN)
    assert (model.num_classes, model.width, model.dtype) == (7, 4, jnp.float32)


@pytest.mark.parametrize("width, num_classes", [(8, 10), (4, 7)])
def test_parameter_count(width, num_classes):
    model = tiny_cnn(num_classes=num_classes, width=width)
    variables = jax.eval_shape(lambda: _init(model, jnp.zeros((1, 32, 32, 3))))
    count = sum(p.size for p in jax.tree.leaves(variables["params"]))
    w, c = width, num_classes
    assert count == 18 * w * w + 33 * w + 2 * w * c + c
    if (w, c) == (8, 10):
        assert count == 1_586
    params = variables["params"]
    assert params["conv1"]["kernel"].shape == (3, 3, 3, w)
    assert params["conv2"]["kernel"].shape == (3, 3, w, 2 * w)
    assert "bias" not in params["conv1"]  # BatchNorm follows
    assert params["head"]["kernel"].shape == (2 * w, c)
    assert set(variables["batch_stats"]) == {"bn1", "bn2"}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_outputs_and_precision(dtype):
    model = tiny_cnn(num_classes=7, width=4, dtype=dtype)
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    variables = _init(model, x)
    for leaf in jax.tree.leaves(variables):  # params and batch_stats stay float32
        assert leaf.dtype == jnp.float32
    logits, features = model.apply(variables, x, train=False)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert features.shape == (2, 8) and features.dtype == jnp.float32  # 2 × width
    assert jnp.all(jnp.isfinite(logits))


def test_train_mode_uses_batch_statistics_and_updates_running_averages():
    model = tiny_cnn(num_classes=3, width=4)
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    variables = _init(model, x)
    (logits_train, _), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["bn1"]["mean"]
    after = updates["batch_stats"]["bn1"]["mean"]
    assert not jnp.allclose(after, before)
    # Momentum 0.9 (PyTorch's 0.1): running = 0.9 · running + 0.1 · batch mean of conv1.
    conv1 = nn.Conv(4, (3, 3), padding=1, use_bias=False)
    batch_mean = conv1.apply({"params": variables["params"]["conv1"]}, x).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(after, 0.9 * before + 0.1 * batch_mean, rtol=1e-5, atol=1e-6)
    # Inference mode reads the running averages and changes nothing.
    logits_eval, _ = model.apply(variables, x, train=False)
    assert not jnp.allclose(logits_eval, logits_train)
    with pytest.raises(Exception, match="batch_stats"):
        model.apply(variables, x, train=True)  # train mode must be allowed to update them


def test_intermediates_are_sown_and_plain_apply_is_unchanged():
    model = tiny_cnn(num_classes=10, width=8)
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    variables = _init(model, x)
    assert "intermediates" not in variables
    plain = model.apply(variables, x, train=False)
    (logits, features), state = model.apply(variables, x, train=False, mutable=["intermediates"])
    np.testing.assert_array_equal(plain[0], logits)
    np.testing.assert_array_equal(plain[1], features)
    sown = state["intermediates"]
    assert sorted(sown) == ["stage1", "stage2"]
    assert [v[0].shape for _, v in sorted(sown.items())] == [(2, 32, 32, 8), (2, 16, 16, 16)]
    # The features are the pooled last stage.
    np.testing.assert_allclose(features, sown["stage2"][0].mean(axis=(1, 2)), rtol=1e-6)
