import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.models import MODELS, ResNet, resnet18


def _param_count(model, image_shape=(32, 32, 3)):
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)
    )
    return sum(p.size for p in jax.tree.leaves(variables["params"])), variables


def test_width_64_has_the_reference_parameter_count():
    # The common PyTorch CIFAR ResNet-18 (kuangliu/pytorch-cifar) has 11,173,962 parameters.
    count, variables = _param_count(resnet18(num_classes=10, width=64))
    assert count == 11_173_962
    params = variables["params"]
    assert params["stem_conv"]["kernel"].shape == (3, 3, 3, 64)
    assert params["stage4_block1"]["shortcut_conv"]["kernel"].shape == (1, 1, 256, 512)
    assert "shortcut_conv" not in params["stage1_block1"]  # identity shortcut
    assert params["head"]["kernel"].shape == (512, 10)


def test_registry():
    assert MODELS["resnet18"] is resnet18


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_outputs_and_precision(dtype):
    model = resnet18(num_classes=7, width=4, dtype=dtype)
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    # Parameters and BatchNorm statistics stay float32 whatever the compute dtype.
    for leaf in jax.tree.leaves(variables):
        assert leaf.dtype == jnp.float32
    (logits, features), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert features.shape == (2, 32) and features.dtype == jnp.float32  # 8 × width
    assert jnp.all(jnp.isfinite(logits))
    # Training mode updates the running statistics; inference mode uses them.
    before = variables["batch_stats"]["stem_bn"]["mean"]
    assert not jnp.allclose(updates["batch_stats"]["stem_bn"]["mean"], before)
    logits_eval, _ = model.apply(variables, x, train=False)
    assert logits_eval.shape == (2, 7)


def test_bfloat16_close_to_float32():
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
    f32 = resnet18(width=4, dtype=jnp.float32)
    bf16 = resnet18(width=4, dtype=jnp.bfloat16)
    variables = f32.init(jax.random.key(0), x, train=False)
    a, _ = f32.apply(variables, x, train=False)
    b, _ = bf16.apply(variables, x, train=False)
    assert jnp.max(jnp.abs(a - b)) < 0.1 * (1 + jnp.max(jnp.abs(a)))


class _NoSow(ResNet):
    """The ResNet with sowing disabled: what `apply` computed before intermediates existed."""

    def sow(self, *args, **kwargs):
        return False


def test_stage_intermediates_and_plain_apply_unchanged():
    model = resnet18(num_classes=10, width=8)
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    assert set(variables) == {"params", "batch_stats"}  # init does not store intermediates
    plain = model.apply(variables, x, train=False)
    reference = _NoSow(num_classes=10, width=8).apply(variables, x, train=False)
    (logits, features), state = model.apply(variables, x, train=False, mutable=["intermediates"])
    for a, b, c in zip(plain, reference, (logits, features), strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical: sowing is a no-op
        np.testing.assert_array_equal(a, c)
    sown = state["intermediates"]
    assert sorted(sown) == ["stage1", "stage2", "stage3", "stage4"]
    shapes = [sown[f"stage{i}"][0].shape for i in range(1, 5)]
    assert shapes == [(2, 32, 32, 8), (2, 16, 16, 16), (2, 8, 8, 32), (2, 4, 4, 64)]
    # The features are the pooled last stage.
    np.testing.assert_allclose(features, sown["stage4"][0].mean(axis=(1, 2)), rtol=1e-6)
