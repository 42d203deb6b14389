"""The building blocks every jaxbd model shares: PyTorch-like initialization and BatchNorm
settings, bias-free convolutions, the residual stages and the pooled dense head.

The helpers create flax submodules with explicit names, so they are called from inside a
module's `nn.compact` method: the submodules belong to that module, and its parameter tree is
what it would be with the layers written out in place (checkpoints do not change).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's BatchNorm momentum 0.1 (weight of the new batch) is flax's 0.9 (weight of the
# running average); eps matches PyTorch's default.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Kaiming-normal with fan_out, as torchvision's ResNets initialize their convolutions.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_linear_init(fan_in: int):
    """PyTorch's nn.Linear default, U(−1/√fan_in, 1/√fan_in), for its weight and bias."""

    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / fan_in**0.5
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(dtype: jnp.dtype) -> Callable[..., nn.Conv]:
    """`nn.Conv` without bias (a BatchNorm follows, or the output is summed before one),
    Kaiming-normal fan-out initialized, computing in `dtype`."""
    return functools.partial(nn.Conv, use_bias=False, kernel_init=conv_init, dtype=dtype)


def batch_norm(train: bool, dtype: jnp.dtype) -> Callable[..., nn.BatchNorm]:
    """`nn.BatchNorm` with PyTorch's momentum and eps: batch statistics (and running-average
    updates) if `train`, running averages otherwise; statistics stay float32."""
    return functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
    )


def stem_conv(x: jax.Array, width: int, dtype: jnp.dtype) -> jax.Array:
    """The CIFAR stem: a 3×3 stride-1 convolution to `width` channels, named "stem_conv"."""
    return conv(dtype)(width, (3, 3), 1, padding=1, name="stem_conv")(x)


def residual_stages(
    module: nn.Module,
    block: type[nn.Module],
    x: jax.Array,
    train: bool,
) -> jax.Array:
    """The four-stage residual trunk of a CIFAR ResNet, inside `module`'s compact call.

    Stage i (1-based) has `module.stage_sizes[i-1]` blocks of `module.width · 2^(i-1)`
    channels, named "stage<i>_block<j>"; the first block of stages 2 onwards has stride 2.
    Each stage's output is sown as "intermediates"/"stage<i>" (a no-op unless the caller
    makes the collection mutable).

    Args:
        module: the model (its `width`, `stage_sizes`, `dtype`), whose compact method calls
            this.
        block: the block class, constructed as `block(features, strides, dtype, name=...)`
            and called as `block(x, train)`.
        x: f[B, H, W, width], the stem's output.
        train: passed to every block.

    Returns:
        f[B, H/8, W/8, 8·width] for four stages (the last block's output).
    """
    for stage, num_blocks in enumerate(module.stage_sizes):
        for index in range(num_blocks):
            strides = 2 if stage > 0 and index == 0 else 1
            x = block(
                module.width * 2**stage,
                strides,
                module.dtype,
                name=f"stage{stage + 1}_block{index + 1}",
            )(x, train)
        module.sow("intermediates", f"stage{stage + 1}", x)
    return x


def pooled_head(x: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """Global average pooling into a dense head named "head" (PyTorch's nn.Linear init).

    Args:
        x: f[B, H, W, D], the last feature map (any compute dtype).
        num_classes: C.

    Returns:
        (logits float32[B, C], features float32[B, D]), both in float32 so that losses and
        metrics never see reduced precision.
    """
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    head_init = torch_linear_init(features.shape[-1])
    logits = nn.Dense(
        num_classes,
        dtype=jnp.float32,
        kernel_init=head_init,
        bias_init=head_init,
        name="head",
    )(features)
    return logits, features
