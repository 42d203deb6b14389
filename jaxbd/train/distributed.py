"""Several processes, one computation: starting JAX's multi-controller runtime, and the few
facts about it that the rest of jaxbd asks for.

On a TPU pod slice or a GPU cluster every host runs the same program on its own devices
(`jax.distributed`): `jax.devices()` then lists the devices of all processes, a mesh over
them spans every host, and a jitted step over global arrays is one computation, whatever
the number of processes. jaxbd builds nothing of its own on top of that runtime; this
module only decides whether to start it (`initialize`), names the process that writes files
(`is_writer`), and wraps the two cross-process exchanges the run machinery needs: a barrier
(`sync`) and process 0's answer to a question (`broadcast_text`).

`initialize` must run before anything else touches JAX (the first `jax.devices()`, array or
jitted call starts the backend, after which `jax.distributed.initialize` is refused); the
command-line entry points call it first (`jaxbd.cli.start_runtime`). Library users who run
several processes call it, or `jax.distributed.initialize` themselves, the same way.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from jaxbd.settings import ConfigError

MODES = ("auto", "off", "on")
"""`config.runtime.distributed`: "auto" starts the runtime when the environment or the
settings say this is one process of several, "on" always, "off" never."""

ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
"""Environment variables read when the settings leave the value unset (JAX itself reads
`JAX_COORDINATOR_ADDRESS`; jaxbd reads the other two in the same style)."""


def initialize(
    mode: str = "auto",
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Starts `jax.distributed` when `mode` and the environment say so.

    "auto": with an explicit coordinator, process count or id (arguments, or the
    `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` environment variables)
    the runtime starts with them, anything left unset detected by JAX; without any, JAX's own
    cluster detection decides (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes) and an
    environment it does not recognize runs as one process. "on": the runtime must start
    (an error otherwise). "off": one process, nothing started.

    Calling it again after the runtime started does nothing; in "auto" without explicit
    values, a JAX backend that already started (JAX was used first) means one process.

    Args:
        mode: one of `MODES`.
        coordinator_address: "host:port" of process 0's coordinator service.
        num_processes: the number of processes.
        process_id: this process's index in [0, num_processes).

    Returns:
        Whether the multi-controller runtime is running.

    Raises:
        ConfigError: naming `config.runtime.*`, for an unknown mode, a bad environment
            variable, a runtime that cannot start from what is known, or a call after
            the JAX backend already started.
    """
    if mode not in MODES:
        raise ConfigError(f"config.runtime.distributed: must be one of {list(MODES)}, got {mode!r}")
    if jax.distributed.is_initialized():
        return True
    if mode == "off":
        return False
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = _from_env(num_processes, ENV_NUM_PROCESSES, "num_processes")
    process_id = _from_env(process_id, ENV_PROCESS_ID, "process_id")
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    if _backend_started():
        if mode == "auto" and not explicit:
            return False  # JAX is in use already, as one process (a library user's session)
        raise ConfigError(
            f"config.runtime.distributed={mode}: the JAX backend started before "
            "jax.distributed could be initialized; start the runtime first "
            "(jaxbd.train.distributed.initialize)"
        )
    # Cross-process collectives of the CPU backend (tests, local multi-process runs); the
    # GPU and TPU backends bring their own and ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    except ValueError as e:
        # JAX raises ValueError when it cannot tell the coordinator, the process count or
        # this process's id: in "auto" without explicit values, not a multi-process job.
        if mode == "auto" and not explicit:
            logging.debug("one process: no multi-process environment detected (%s)", e)
            return False
        raise ConfigError(
            f"config.runtime.distributed={mode}: cannot start jax.distributed ({e}); set "
            "--config.runtime.coordinator_address, num_processes and process_id (or "
            f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})"
        ) from None
    except TypeError as e:
        raise ConfigError(f"config.runtime: cannot start jax.distributed: {e}") from None
    if is_writer():
        logging.info(
            "jax.distributed: %d processes, %d devices (%d on this one)",
            jax.process_count(),
            jax.device_count(),
            jax.local_device_count(),
        )
    return True


def _from_env(value: int | None, variable: str, field: str) -> int | None:
    if value is not None:
        return value
    text = os.environ.get(variable)
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(
            f"config.runtime.{field}: ${variable} must be an integer, got {text!r}"
        ) from None


def _backend_started() -> bool:
    from jax._src import xla_bridge  # no public query; initialize() itself asks the same

    return xla_bridge.backends_are_initialized()


def process_count() -> int:
    """The number of processes of this computation (1 without `jax.distributed`)."""
    return jax.process_count()


def is_writer() -> bool:
    """Whether this process writes the run's files (process 0 does, and only it)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier of all processes (nothing with one process): `name` must be the same on
    every process and unique among the barriers in flight."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def broadcast_text(text: str | None) -> str:
    """Process 0's `text`, on every process (the others' argument is ignored).

    Used for a decision only process 0 can take, such as the outcome of claiming the run
    directory, so that every process continues (or stops) the same way.
    """
    if jax.process_count() == 1:
        return text or ""
    from jax.experimental import multihost_utils

    data = np.frombuffer((text or "").encode(), np.uint8) if is_writer() else np.zeros(0, np.uint8)
    # Arrays of one shape on every process: the length first, then the bytes.
    length = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
    buffer = np.zeros(length, np.uint8)
    if is_writer():
        buffer[:] = data
    received = multihost_utils.broadcast_one_to_all(buffer)
    return bytes(np.asarray(received, np.uint8)).decode()
