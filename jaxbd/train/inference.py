"""Inference over a whole image set in fixed-shape batches (one compiled shape)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxbd.train import sharding
from jaxbd.types import PyTree


def predict_batches(
    predict: Callable,
    params: PyTree,
    batch_stats: PyTree,
    images,
    *,
    batch_size: int,
    batch_sharding: jax.sharding.Sharding,
) -> tuple[jax.Array, jax.Array]:
    """Logits and features of every image, `batch_size` at a time, the last batch padded.

    Args:
        predict: the compiled `predict(params, batch_stats, images) -> (logits, features)`.
        params, batch_stats: the model variables.
        images: uint8[N, H, W, 3], on the host or the device.
        batch_size: images per call.
        batch_sharding: how a global batch is split over every process's devices (used
            with several processes).

    Returns:
        (logits float32[N, C], features float32[N, F]) on the device.
    """
    n = int(images.shape[0])
    b = batch_size
    logits, features = [], []
    for first in range(0, n, b):
        batch = images[first : first + b]
        real = int(batch.shape[0])
        if real < b:  # Pad the last batch so every call has the same shape.
            batch = jnp.concatenate(
                [jnp.asarray(batch), jnp.zeros((b - real, *batch.shape[1:]), batch.dtype)]
            )
        if jax.process_count() > 1:  # a global batch, split over every process's devices
            batch = sharding.put(batch, batch_sharding)
        out_logits, out_features = predict(params, batch_stats, batch)
        logits.append(out_logits[:real])
        features.append(out_features[:real])
    return jnp.concatenate(logits), jnp.concatenate(features)
