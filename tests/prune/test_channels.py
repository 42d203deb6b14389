"""The conv → BatchNorm map and filter masks: hand-checked maps of ResNet-18 and
PreActResNet-18 (stem, a downsampling block with its projection shortcut, the last block),
a model whose parameter order contradicts its data flow, exact masks, a pruned filter's
output exactly zero in the forward pass, and zero through fine-tuning with the engine.

Maps are traced abstractly (no compile). Forward passes use width 4 on 8×8 inputs; the
fine-tuning test uses a two-stage ResNet (stem, an identity block, a downsampling block)
so that its compile stays short. Variables are drawn in NumPy on the abstract shapes
(non-trivial BN statistics, so a BN channel left unpruned would visibly re-emit its shift).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbd.data import make_synthetic
from jaxbd.models import ResNet, preact_resnet18, resnet18, tiny_cnn
from jaxbd.prune import ConvBN, apply_mask, conv_bn_pairs, filter_keep_mask, filter_mask
from jaxbd.train import CosineSchedule, Trainer, make_mesh

IMAGE = (8, 8, 3)


def _variables(model, image_shape=IMAGE, seed=0):
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)
    )

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            value = rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
        elif name in ("scale", "var"):
            value = 1 + 0.3 * rng.uniform(size=leaf.shape)
        else:
            value = 0.3 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, jnp.float32)

    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    return variables["params"], variables["batch_stats"]


def _by_name(pairs):
    return {p.name: p for p in pairs}


# -- the map -----------------------------------------------------------------------------


def test_resnet18_map():
    model = resnet18(width=4)
    params, _ = _variables(model)
    pairs = conv_bn_pairs(model, params, IMAGE)
    m = _by_name(pairs)
    assert len(pairs) == 20  # stem + 8 blocks × 2 + 3 projection shortcuts
    assert pairs[0] == ConvBN(("stem_conv",), ("stem_bn",), 4, 1e-5)
    # A downsampling block: each conv with its own BN, the shortcut conv with shortcut_bn.
    assert m["stage2_block1/conv1"].bn == ("stage2_block1", "bn1")
    assert m["stage2_block1/conv2"].bn == ("stage2_block1", "bn2")
    assert m["stage2_block1/shortcut_conv"].bn == ("stage2_block1", "shortcut_bn")
    assert m["stage2_block1/shortcut_conv"].out_channels == 8
    # The last block.
    assert m["stage4_block2/conv1"].bn == ("stage4_block2", "bn1")
    assert m["stage4_block2/conv2"].bn == ("stage4_block2", "bn2")
    assert m["stage4_block2/conv2"].out_channels == 32
    assert all(p.bn is not None for p in pairs)


def test_preact_resnet18_map():
    model = preact_resnet18(width=4)
    params, _ = _variables(model)
    pairs = conv_bn_pairs(model, params, IMAGE)
    m = _by_name(pairs)
    assert len(pairs) == 20
    # The stem has no BN of its own in the parameter tree: the first block's bn1 reads its
    # output directly (the identity shortcut reads the same array, un-normalized).
    assert m["stem_conv"] == ConvBN(("stem_conv",), ("stage1_block1", "bn1"), 4, 1e-5)
    # A downsampling block: conv1 -> bn2; conv2 and the bare shortcut are summed before any
    # BN, so neither has one of its own (the next block's bn1 normalizes the sum).
    block = "stage2_block1"
    assert m[f"{block}/conv1"].bn == (block, "bn2")
    assert m[f"{block}/conv2"].bn is None
    assert m[f"{block}/shortcut_conv"] == ConvBN((block, "shortcut_conv"), None, 8, None)
    # Call order: the shortcut reads relu(bn1(x)) before conv1 runs.
    names = [p.name for p in pairs]
    assert names.index(f"{block}/shortcut_conv") < names.index(f"{block}/conv1")
    # The last block: no final BN before the pool, so conv2 has none.
    assert m["stage4_block2/conv1"].bn == ("stage4_block2", "bn2")
    assert m["stage4_block2/conv2"].bn is None
    # Pairing by parameter order (BackdoorBench's CLP) would give stage2_block2/bn1 to a
    # conv of stage2_block1; no conv owns it here.
    assert ("stage2_block2", "bn1") not in {p.bn for p in pairs}


class _Scrambled(nn.Module):
    """Parameter order (alphabetical) contradicts the data flow: "a_bn" normalizes
    "z_conv", and "b_conv"'s output only meets a BN after an activation."""

    @nn.compact
    def __call__(self, x, train=False):
        y = nn.Conv(3, (3, 3), use_bias=False, name="z_conv")(x)
        y = nn.BatchNorm(use_running_average=not train, epsilon=1e-3, name="a_bn")(y)
        z = nn.Conv(5, (1, 1), name="b_conv")(y)
        z = nn.BatchNorm(use_running_average=not train, name="y_bn")(nn.relu(z))
        features = jnp.mean(z, axis=(1, 2))
        return nn.Dense(2, name="head")(features), features


def test_map_follows_the_data_flow_not_the_parameter_order():
    model = _Scrambled()
    params, _ = _variables(model)
    assert list(params) == ["a_bn", "b_conv", "head", "y_bn", "z_conv"]
    pairs = conv_bn_pairs(model, params, IMAGE)
    assert pairs == (
        ConvBN(("z_conv",), ("a_bn",), 3, 1e-3),
        ConvBN(("b_conv",), None, 5, None),
    )


def test_map_refuses_parameters_of_another_model():
    params, _ = _variables(resnet18(width=8))
    with pytest.raises(ValueError, match="params of another model"):
        conv_bn_pairs(resnet18(width=4), params, IMAGE)
    # A conv kernel the trace never produced would silently go unpruned: refused.
    model = tiny_cnn(width=4)
    params = {**_variables(model)[0], "extra": {"kernel": jnp.zeros((3, 3, 4, 4))}}
    with pytest.raises(ValueError, match=r"no nn\.Conv call"):
        conv_bn_pairs(model, params, IMAGE)


# -- masks -------------------------------------------------------------------------------


def test_filter_mask_zeroes_exactly_the_filters_and_their_own_bn_channels():
    model = preact_resnet18(width=4)
    params, _ = _variables(model)
    pairs = conv_bn_pairs(model, params, IMAGE)
    mask = filter_mask(
        params,
        pairs,
        {
            ("stage2_block1", "conv1"): [1, 6],
            "stage2_block1/conv2": np.array([3]),  # no own BN: the kernel slice only
            "stem_conv": [],
        },
    )
    for leaf in jax.tree.leaves(mask):
        assert leaf.dtype == jnp.float32
    b = mask["stage2_block1"]
    expected = np.ones(8, np.float32)
    expected[[1, 6]] = 0
    np.testing.assert_array_equal(b["conv1"]["kernel"], np.broadcast_to(expected, (3, 3, 4, 8)))
    np.testing.assert_array_equal(b["bn2"]["scale"], expected)
    np.testing.assert_array_equal(b["bn2"]["bias"], expected)
    k = np.ones((3, 3, 8, 8), np.float32)
    k[..., 3] = 0
    np.testing.assert_array_equal(b["conv2"]["kernel"], k)
    # Nothing else is touched: in particular not the next block's bn1, which normalizes
    # the sum conv2 + shortcut, nor the shortcut.
    zeros = 2 * 3 * 3 * 4 + 2 + 2 + 3 * 3 * 8
    assert sum(int(np.sum(leaf == 0)) for leaf in jax.tree.leaves(mask)) == zeros
    # The traceable form gives the same mask.
    keep = {("stage2_block1", "conv1"): jnp.asarray(expected)}
    jitted = jax.jit(lambda kp: filter_keep_mask(params, pairs, kp))(keep)
    np.testing.assert_array_equal(jitted["stage2_block1"]["bn2"]["scale"], expected)


def test_filter_mask_errors():
    model = tiny_cnn(width=4)
    params, _ = _variables(model)
    pairs = conv_bn_pairs(model, params, IMAGE)
    with pytest.raises(ValueError, match=r"must be in \[0, 4\)"):
        filter_mask(params, pairs, {"conv1": [4]})
    with pytest.raises(ValueError, match="not a conv of the map"):
        filter_mask(params, pairs, {"bn1": [0]})
    with pytest.raises(ValueError, match="must be f32"):
        filter_keep_mask(params, pairs, {"conv2": jnp.ones(4)})


def _captured(model, params, batch_stats, x, train):
    _, state = model.apply(
        {"params": params, "batch_stats": batch_stats},
        x,
        train=train,
        capture_intermediates=True,
        mutable=["intermediates", "batch_stats"],
    )
    return state["intermediates"]


@pytest.mark.parametrize("train", [False, True])
def test_pruned_filters_output_exactly_zero(train):
    x = jax.random.normal(jax.random.key(1), (4, *IMAGE))
    # ResNet: the filter's own BN emits exactly 0 on that channel.
    model = resnet18(width=4)
    params, stats = _variables(model)
    pairs = conv_bn_pairs(model, params, IMAGE)
    mask = filter_mask(
        params, pairs, {"stage2_block1/conv1": [2], "stage2_block1/shortcut_conv": [5]}
    )
    out = _captured(model, apply_mask(params, mask), stats, x, train)["stage2_block1"]
    for bn, k in (("bn1", 2), ("shortcut_bn", 5)):
        y = out[bn]["__call__"][0]
        assert np.all(np.asarray(y[..., k]) == 0)
        assert np.all(np.abs(np.delete(np.asarray(y), k, axis=-1)).max() > 0)
    # Unmasked, the same BN channel re-emits a shift: the BN mask is what makes it zero.
    out = _captured(model, params, stats, x, train)["stage2_block1"]
    assert np.abs(np.asarray(out["bn1"]["__call__"][0][..., 2])).max() > 0

    # PreActResNet: the stem's own BN is stage1_block1/bn1; conv2 (no own BN) outputs 0.
    model = preact_resnet18(width=4)
    params, stats = _variables(model)
    pairs = conv_bn_pairs(model, params, IMAGE)
    mask = filter_mask(params, pairs, {"stem_conv": [0], "stage3_block1/conv2": [9]})
    out = _captured(model, apply_mask(params, mask), stats, x, train)
    assert np.all(np.asarray(out["stem_conv"]["__call__"][0][..., 0]) == 0)
    assert np.all(np.asarray(out["stage1_block1"]["bn1"]["__call__"][0][..., 0]) == 0)
    assert np.all(np.asarray(out["stage3_block1"]["conv2"]["__call__"][0][..., 9]) == 0)


def test_pruned_filters_stay_zero_through_fine_tuning():
    model = ResNet(num_classes=4, width=4, stage_sizes=(1, 1))
    params, stats = _variables(model)
    pairs = conv_bn_pairs(model, params, IMAGE)
    by = _by_name(pairs)
    assert by["stage2_block1/shortcut_conv"].bn == ("stage2_block1", "shortcut_bn")
    mask = filter_mask(
        params, pairs, {"stem_conv": [1], "stage2_block1/conv2": [0, 7], "stage1_block1/conv1": [3]}
    )
    data = make_synthetic(num_train=16, num_test=4, num_classes=4, image_size=8, seed=0).train
    trainer = Trainer(
        model,
        make_mesh(1),
        batch_size=8,
        eval_batch_size=8,
        momentum=0.9,
        weight_decay=5e-4,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        steps_per_call=1,
        progress=False,
    )
    state = trainer.new_state(
        apply_mask(params, mask),
        stats,
        CosineSchedule.create(0.1, 100),
        rng=jax.random.key(0),
        mask=mask,
    )
    device_data = trainer.put(data.images, data.labels)
    for epoch in range(2):  # 4 SGD steps with momentum and weight decay
        state, _, _ = trainer.train_epoch(state, device_data, jax.random.key(epoch))
    p = jax.device_get(state.params)
    moved = np.abs(
        p["stage2_block1"]["conv1"]["kernel"] - params["stage2_block1"]["conv1"]["kernel"]
    )
    assert moved.max() > 0  # training did happen
    for leaf, m in zip(jax.tree.leaves(p), jax.tree.leaves(mask), strict=True):
        assert np.all(np.asarray(leaf)[np.asarray(m) == 0] == 0)
    x = jax.random.normal(jax.random.key(1), (4, *IMAGE))
    out = _captured(model, p, jax.device_get(state.batch_stats), x, False)
    assert np.all(np.asarray(out["stem_bn"]["__call__"][0][..., 1]) == 0)
    assert np.all(np.asarray(out["stage2_block1"]["bn2"]["__call__"][0][..., [0, 7]]) == 0)
    assert np.all(np.asarray(out["stage1_block1"]["bn1"]["__call__"][0][..., 3]) == 0)
