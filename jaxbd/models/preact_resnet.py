"""CIFAR PreActResNet-18 (He, Zhang, Ren, Sun 2016, "Identity mappings in deep residual
networks") in flax.linen, as BackdoorBench trains it (Wu et al. 2022, "BackdoorBench: A
Comprehensive Benchmark of Backdoor Learning", `models/preact_resnet.py`).

Pre-activation basic block, for input x:

    a = relu(bn1(x))
    shortcut = shortcut_conv(a)   (1×1, stride s, NO BatchNorm) if the shape changes, else x
    y = conv2(relu(bn2(conv1(a)))) + shortcut

A block's output is a plain residual sum, normalized by the NEXT block's `bn1`; the stem
conv has no BatchNorm after it, and the last sum is average-pooled straight into the dense
head. With w = 64 and 10 classes it has 11,171,146 parameters, BackdoorBench's count. It
follows the conventions of `jaxbd.models.resnet`. The whole architecture, which BatchNorm
normalizes which conv (for channel pruning) and the sown stage outputs: docs/models.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbd.models.layers import batch_norm, conv, pooled_head, residual_stages, stem_conv


class PreActBlock(nn.Module):
    """A pre-activation basic block (see the module docstring).

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
        a = nn.relu(norm(name="bn1")(x))
        if self.strides != 1 or x.shape[-1] != self.features:
            # BackdoorBench's shortcut: a bare 1×1 conv of the pre-activated input.
            shortcut = c(self.features, (1, 1), self.strides, padding=0, name="shortcut_conv")(a)
        else:
            shortcut = x
        y = c(self.features, (3, 3), self.strides, padding=1, name="conv1")(a)
        y = nn.relu(norm(name="bn2")(y))
        y = c(self.features, (3, 3), 1, padding=1, name="conv2")(y)
        return y + shortcut


class PreActResNet(nn.Module):
    """CIFAR-style pre-activation ResNet (BackdoorBench's; see the module docstring).

    Attributes:
        num_classes: C, size of the dense head.
        width: channels of the stem and first stage (64 for the standard PreActResNet-18).
        stage_sizes: blocks per stage ((2, 2, 2, 2) for PreActResNet-18).
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
            globally pooled last residual sum (no final BN–ReLU, as in BackdoorBench).
        """
        # No BatchNorm after the stem: the first block's bn1 normalizes it.
        x = stem_conv(x.astype(self.dtype), self.width, self.dtype)
        x = residual_stages(self, PreActBlock, x, train)
        return pooled_head(x, self.num_classes)


def preact_resnet18(
    num_classes: int = 10, width: int = 64, dtype: jnp.dtype = jnp.float32
) -> PreActResNet:
    """BackdoorBench's PreActResNet-18 (width 64 → 11,171,146 parameters for 10 classes;
    registered as "preact_resnet18"); see the module docstring."""
    return PreActResNet(num_classes=num_classes, width=width, stage_sizes=(2, 2, 2, 2), dtype=dtype)
