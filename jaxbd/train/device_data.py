"""A dataset resident on the devices: uint8 images, labels and loss weights, placed once."""

from __future__ import annotations

import zlib

import flax.struct
import jax
import numpy as np

from jaxbd.train import sharding


@flax.struct.dataclass
class DeviceData:
    """A dataset resident on the devices (replicated over the mesh).

    Attributes:
        images: uint8[N, H, W, 3].
        labels: int32[N].
        weights: float32[N] per-example loss weights (1 for plain training; 0 excludes).
    """

    images: jax.Array
    labels: jax.Array
    weights: jax.Array

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def put_data(images, labels, weights, replicated: jax.sharding.Sharding) -> DeviceData:
    """Copies a dataset to the devices once, with `replicated` sharding.

    Args:
        images: uint8[N, H, W, 3].
        labels: int[N].
        weights: optional float[N] loss weights (ones when None).
        replicated: the mesh's replicated sharding.
    """
    n = len(labels)
    weights = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
    if weights.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {weights.shape}")
    data = DeviceData(
        images=np.asarray(images, np.uint8),
        labels=np.asarray(labels, np.int32),
        weights=weights,
    )
    if jax.process_count() > 1:
        _check_same_everywhere(data)
    return sharding.put(data, replicated)


def _check_same_everywhere(data: DeviceData) -> None:
    """Raises unless every process holds the same dataset (compared by a checksum).

    Each process builds its copy of the global arrays from its own host data, which is only
    one global array if the copies agree: a host with another copy of the data (a different
    file, cache or poisoning) would otherwise train silently on something else.
    """
    from jax.experimental import multihost_utils

    digest = np.zeros(8, np.uint32)
    for i, leaf in enumerate((data.images, data.labels, data.weights)):
        digest[i] = zlib.crc32(np.ascontiguousarray(leaf).view(np.uint8).reshape(-1))
    multihost_utils.assert_equal(
        digest,
        fail_message=(
            "the training data differs between processes: every process must load the "
            "same dataset (the same files, settings and seed)"
        ),
    )
