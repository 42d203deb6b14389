"""Data parallelism: a 1-D device mesh and the shardings the engine uses.

jaxbd uses `jit` with `NamedSharding` rather than `shard_map`. The train step is written as
ordinary single-device code over the *global* batch; we only declare that the batch axis is
split over the mesh axis "data" and that parameters and optimizer state are replicated. XLA's
SPMD partitioner then inserts the all-reduces for the gradient and for the BatchNorm batch
statistics. So the computation is the same function on 1 or N devices (BatchNorm normalizes
with the whole global batch's statistics, not per-device ones as an unsynchronized `pmap`
would; results agree up to reduction order, `tests/train/test_data_parallel.py`), and nothing
in the model or the step mentions devices: users can call the same `train_step` in their
own jitted code, and multi-host TPU pods need no code change.

With several processes (`jaxbd.train.distributed`) the mesh spans every process's devices
and each process holds only its own devices' shards of a global array. Every process computes
the same host values (it loads the same dataset and derives the same keys), so `put` builds
a global array from each process's local copy with `jax.make_array_from_process_local_data`:
nothing is sent between hosts, and the jitted step is the same global computation as on one
host.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first `num_devices` devices (all when None).

    With several processes the mesh spans every process's devices (`jax.devices()` lists
    them all), so `num_devices` must then be None or the global count.
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ValueError(
            f"num_devices={num_devices} but {len(devices)} {devices[0].platform} device(s) "
            f"are available"
        )
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError(
            f"num_devices={num_devices}: with {jax.process_count()} processes the mesh spans "
            f"all {len(devices)} devices"
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


def put(tree, sharding: NamedSharding):
    """Places a pytree of host values or arrays with `sharding` (replicated or batch-split).

    One process: `jax.device_put`. Several: each leaf becomes a global array built from this
    process's copy of the whole value (`jax.make_array_from_process_local_data`; each process
    keeps the shards of its own devices), which requires every process to pass the same
    value, as every process does when it computes the same host values. A leaf that already
    is a global array is resharded with `jax.device_put` if its sharding differs. Typed PRNG
    keys go as their key data.

    Args:
        tree: a pytree of NumPy arrays, scalars or `jax.Array`s (typed keys included).
        sharding: where they go.

    Returns:
        The pytree of arrays with `sharding`.
    """
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: _put_global(x, sharding), tree)


def _put_global(x, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = _put_global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x if x.sharding == sharding else jax.device_put(x, sharding)
    local = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, local, local.shape)
