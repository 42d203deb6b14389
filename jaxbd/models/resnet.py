"""CIFAR ResNet-18 (He, Zhang, Ren, Sun 2016, "Deep residual learning for image
recognition") in flax.linen, width configurable.

The CIFAR variant: a 3×3 stride-1 stem with no max-pool, four stages of two basic blocks
(w, 2w, 4w, 8w channels; stride 2 at the start of stages 2–4), global average pooling and a
dense head. With w = 64 and 10 classes it has 11,173,962 parameters, like the common PyTorch
CIFAR ResNet-18. Each stage's output is sown as `"intermediates"/"stage<i>"`, a no-op unless
the caller makes that collection mutable. Parameters and BatchNorm statistics are float32,
and so are the logits and features, whatever the compute `dtype`.

The architecture in detail, the intermediates' structure and shapes, and the precision
rules: docs/models.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbd.models.layers import batch_norm, conv, pooled_head, residual_stages, stem_conv


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity or projection shortcut.

    Attributes:
        features: output channels.
        strides: stride of the first conv (and of the projection shortcut).
        dtype: compute dtype.
    """

    features: int
    strides: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c, norm = conv(self.dtype), batch_norm(train, self.dtype)
        y = c(self.features, (3, 3), self.strides, padding=1, name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = c(self.features, (3, 3), 1, padding=1, name="conv2")(y)
        y = norm(name="bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = c(self.features, (1, 1), self.strides, padding=0, name="shortcut_conv")(x)
            x = norm(name="shortcut_bn")(x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """CIFAR-style ResNet built from basic blocks.

    Attributes:
        num_classes: C, size of the dense head.
        width: channels of the stem and first stage (64 for the standard ResNet-18).
        stage_sizes: basic blocks per stage ((2, 2, 2, 2) for ResNet-18).
        dtype: compute dtype (float32 or bfloat16); parameters stay float32.
    """

    num_classes: int = 10
    width: int = 64
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Classifies a batch.

        Args:
            x: float[B, H, W, 3] normalized images.
            train: batch statistics (and running-average updates) if True, running
                averages otherwise.

        Returns:
            (logits float32[B, C], features float32[B, 8·width]) where features are the
            globally pooled penultimate activations.
        """
        x = stem_conv(x.astype(self.dtype), self.width, self.dtype)
        x = nn.relu(batch_norm(train, self.dtype)(name="stem_bn")(x))
        x = residual_stages(self, BasicBlock, x, train)
        return pooled_head(x, self.num_classes)


def resnet18(num_classes: int = 10, width: int = 64, dtype: jnp.dtype = jnp.float32) -> ResNet:
    """The CIFAR ResNet-18 (width 64 → 11.17M parameters); see the module docstring."""
    return ResNet(num_classes=num_classes, width=width, stage_sizes=(2, 2, 2, 2), dtype=dtype)
