"""A tiny CNN for fast pipeline tests; not a research model.

It exists so that tests about the pipeline (poisoning, selection, training phases, pruning,
checkpoints, summaries) compile in a fraction of a second instead of the seconds a ResNet-18
takes, while exercising everything a model contributes to the pipeline: convolution kernels
to prune, BatchNorm statistics in `batch_stats`, a dense head, and the `(logits, features)`
outputs. Do not draw research conclusions from it; use `jaxbd.models.resnet18`.

Architecture, for width w: 3×3 conv (w channels, stride 1) → BatchNorm → ReLU, 3×3 conv
(2w channels, stride 2) → BatchNorm → ReLU, global average pooling (the 2w-d features), dense
head. Convolutions have no bias (BatchNorm follows). With C classes it has
18w² + 33w + 2wC + C parameters (w = 8, C = 10: 1,586).

It follows the ResNet's conventions: the same constructor keywords (`num_classes`, `width`,
`dtype`) and call signature `__call__(x, train) -> (logits float32[B, C], features
float32[B, 2w])`; parameters and BatchNorm statistics are float32 whatever the compute
`dtype`; the same initializers and BatchNorm momentum. Each conv block's output is sown into
the "intermediates" collection as "stage1" ([B, H, W, w]) and "stage2" ([B, ⌈H/2⌉, ⌈W/2⌉, 2w]);
as for the ResNet, this is a no-op unless the caller makes "intermediates" mutable.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbd.models.layers import batch_norm, conv, pooled_head


class TinyCNN(nn.Module):
    """Two conv-BN-ReLU blocks, global average pooling and a dense head (see the module
    docstring).

    Attributes:
        num_classes: C, size of the dense head.
        width: channels of the first conv (the second has 2·width).
        dtype: compute dtype (float32 or bfloat16); parameters stay float32.
    """

    num_classes: int = 10
    width: int = 8
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Classifies a batch.

        Args:
            x: float[B, H, W, 3] normalized images.
            train: batch statistics (and running-average updates) if True, running
                averages otherwise.

        Returns:
            (logits float32[B, C], features float32[B, 2·width]) where features are the
            globally pooled activations of the second block.
        """
        x = x.astype(self.dtype)
        for stage, (channels, strides) in enumerate(((self.width, 1), (2 * self.width, 2))):
            x = conv(self.dtype)(channels, (3, 3), strides, padding=1, name=f"conv{stage + 1}")(x)
            x = nn.relu(batch_norm(train, self.dtype)(name=f"bn{stage + 1}")(x))
            self.sow("intermediates", f"stage{stage + 1}", x)
        return pooled_head(x, self.num_classes)


def tiny_cnn(num_classes: int = 10, width: int = 8, dtype: jnp.dtype = jnp.float32) -> TinyCNN:
    """The tiny test network (registered as "tiny_cnn"); see the module docstring."""
    return TinyCNN(num_classes=num_classes, width=width, dtype=dtype)
