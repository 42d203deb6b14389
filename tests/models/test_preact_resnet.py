"""PreActResNet-18: BackdoorBench's parameter count and layout, outputs and precision, the
pre-activation block computed by hand, stage intermediates, and config selection.

Width 64 is only shape-evaluated (`jax.eval_shape`: nothing compiles); everything that runs
uses width 4 on 8–16 px inputs, with variables drawn in NumPy on the abstract shapes (the
model's own initializers compile one random-number program per parameter shape, seconds on
a CPU).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.models import MODELS, PreActResNet, preact_resnet18
from jaxbd.models.preact_resnet import PreActBlock
from jaxbd.models.settings import ModelSettings


def _shapes(model, image_shape=(32, 32, 3)):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)
    )


def _variables(model, image_shape, seed=0):
    """Random float32 variables with the model's structure (BN statistics non-trivial)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
        if name in ("scale", "var"):
            return 1 + 0.3 * rng.uniform(size=leaf.shape)
        return 0.1 * rng.normal(size=leaf.shape)

    shapes = _shapes(model, image_shape)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(draw(path, leaf), jnp.float32), shapes
    )


def test_width_64_has_backdoorbenchs_parameter_count():
    variables = _shapes(preact_resnet18(num_classes=10, width=64))
    params = variables["params"]
    assert sum(p.size for p in jax.tree.leaves(params)) == 11_171_146
    assert params["stem_conv"]["kernel"].shape == (3, 3, 3, 64)
    assert "stem_bn" not in params  # the first block's bn1 normalizes the stem
    # Projection shortcuts are bare 1×1 convs (no BatchNorm) where the shape changes.
    assert set(params["stage2_block1"]) == {"bn1", "conv1", "bn2", "conv2", "shortcut_conv"}
    assert params["stage2_block1"]["shortcut_conv"]["kernel"].shape == (1, 1, 64, 128)
    assert params["stage4_block1"]["shortcut_conv"]["kernel"].shape == (1, 1, 256, 512)
    assert set(params["stage1_block1"]) == {"bn1", "conv1", "bn2", "conv2"}  # identity
    # bn1 normalizes the block's input: the previous stage's width.
    assert params["stage2_block1"]["bn1"]["scale"].shape == (64,)
    # No BN–ReLU before the pool: the head follows the last block directly.
    assert set(params) == {
        "stem_conv",
        "head",
        *(f"stage{s}_block{b}" for s in range(1, 5) for b in (1, 2)),
    }
    assert params["head"]["kernel"].shape == (512, 10)


def test_registry_and_config_selection():
    assert MODELS["preact_resnet18"] is preact_resnet18
    model = ModelSettings(name="preact_resnet18", width=4, dtype="float32").build(7)
    assert isinstance(model, PreActResNet) and model.num_classes == 7 and model.width == 4


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_outputs_and_precision(dtype):
    model = preact_resnet18(num_classes=7, width=4, dtype=dtype)
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    for leaf in jax.tree.leaves(_shapes(model, (16, 16, 3))):
        assert leaf.dtype == jnp.float32  # params and BN statistics stay float32
    variables = _variables(model, (16, 16, 3))
    (logits, features), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert features.shape == (2, 32) and features.dtype == jnp.float32  # 8 × width
    assert jnp.all(jnp.isfinite(logits))
    before = variables["batch_stats"]["stage1_block1"]["bn1"]["mean"]
    assert not jnp.allclose(updates["batch_stats"]["stage1_block1"]["bn1"]["mean"], before)


def _conv(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        [(padding, padding)] * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )


def _bn(x, params, stats, eps=1e-5):
    return (x - stats["mean"]) / jnp.sqrt(stats["var"] + eps) * params["scale"] + params["bias"]


def test_downsampling_block_matches_a_hand_computation():
    # relu(bn1(x)) feeds both conv1 and the bare 1×1 shortcut (BackdoorBench's order), and
    # the output is the plain sum, with no activation after it.
    block = PreActBlock(features=6, strides=2)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    # Non-trivial BN statistics and affine parameters, so every BN matters.
    variables = _variables(block, (8, 8, 3))
    p, s = variables["params"], variables["batch_stats"]
    got = block.apply({"params": p, "batch_stats": s}, x, train=False)
    a = jax.nn.relu(_bn(x, p["bn1"], s["bn1"]))
    shortcut = _conv(a, p["shortcut_conv"]["kernel"], 2, 0)
    y = jax.nn.relu(_bn(_conv(a, p["conv1"]["kernel"], 2, 1), p["bn2"], s["bn2"]))
    want = _conv(y, p["conv2"]["kernel"], 1, 1) + shortcut
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert float(jnp.min(got)) < 0  # a pre-activation sum, not a ReLU output


def test_stage_intermediates_and_plain_apply_unchanged():
    model = preact_resnet18(num_classes=10, width=4)
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    variables = _variables(model, (16, 16, 3))
    assert set(variables) == {"params", "batch_stats"}
    plain = model.apply(variables, x, train=False)
    (logits, features), state = model.apply(variables, x, train=False, mutable=["intermediates"])
    np.testing.assert_array_equal(plain[0], logits)
    np.testing.assert_array_equal(plain[1], features)
    sown = state["intermediates"]
    shapes = [sown[f"stage{i}"][0].shape for i in range(1, 5)]
    assert shapes == [(2, 16, 16, 4), (2, 8, 8, 8), (2, 4, 4, 16), (2, 2, 2, 32)]
    # The features are the pooled last stage output (no final BN–ReLU).
    np.testing.assert_allclose(features, jnp.mean(sown["stage4"][0], axis=(1, 2)), rtol=1e-6)
