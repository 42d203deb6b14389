"""Data parallelism: a 1-D device mesh and the shardings the engine uses.

jaxbd uses `jit` with `NamedSharding` rather than `shard_map`. The train step is written as
ordinary single-device code over the *global* batch; we only declare that the batch axis is
split over the mesh axis "data" and that parameters and optimizer state are replicated. XLA's
SPMD partitioner then inserts the all-reduces for the gradient and for the BatchNorm batch
statistics. Two consequences made us choose it:

- The computation is the same function on 1 or N devices: BatchNorm normalizes with the
  statistics of the whole global batch (not per-device ones, as an unsynchronized `pmap` would),
  so results agree across device counts up to floating-point reduction order, which
  `tests/train/test_data_parallel.py` checks.
- Nothing in the model or the step mentions devices, so library users can call the same
  `train_step` inside their own jitted code, and multi-host TPU pods need no code change.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (all when None)."""
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"num_devices={num_devices} but {len(devices)} {devices[0].platform} device(s) "
            f"are available"
        )
    return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, the dataset)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split across the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """Raises a clear error if a batch cannot be split evenly over the mesh."""
    n = mesh.devices.size
    if batch_size <= 0 or batch_size % n:
        raise ValueError(
            f"{what}={batch_size} must be a positive multiple of the number of devices ({n}) "
            f"for data-parallel training; use e.g. {what}={max(n, batch_size // n * n)}"
        )
