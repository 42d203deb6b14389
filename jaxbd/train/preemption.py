"""Preemption: a SIGTERM asks training to stop after the current step, on every process.

Spot and preemptible GPU VMs, and Cloud TPU maintenance events, send SIGTERM and kill the
process a short grace period later. With `catch_sigterm` active, a SIGTERM only sets a flag;
the engine's epoch loop asks `stop_requested()` after each call it dispatches, stops there,
and the training phase saves a checkpoint (mid-epoch if need be) before it raises
`Preempted`, which the command line turns into a message with the command that resumes.

With several processes the step to stop at must be the same on all of them (a checkpoint
is one collective write, and a process that stopped alone would leave the others waiting
in a collective). JAX's multi-controller runtime has that agreement built in: its
preemption notifier catches SIGTERM on any host, and `reached_preemption_sync_point(n)`
turns true on every process at the same call `n`. `stop_requested` is that call whenever
`jax.distributed` runs; it counts its own calls, which agree across processes because every
process runs the same program.

A second SIGTERM (single process) terminates at once, as without the handler.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading

import jax


class Preempted(Exception):  # noqa: N818 (not an error: a requested stop)
    """Training stopped at a preemption request after saving a checkpoint.

    Attributes:
        phase: the training phase that stopped.
        epoch: the epoch in progress (1-based).
        step_in_epoch: steps of that epoch that are done (and saved).
    """

    def __init__(self, phase: str, epoch: int, step_in_epoch: int, message: str):
        super().__init__(message)
        self.phase, self.epoch, self.step_in_epoch = phase, epoch, step_in_epoch


_requested = threading.Event()
_handler_depth = 0
_calls = itertools.count()


def _on_sigterm(signum, frame) -> None:
    if _requested.is_set():
        # A second SIGTERM: the user insists. Terminate as if no handler were installed.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _requested.set()


@contextlib.contextmanager
def catch_sigterm():
    """Within the block, SIGTERM requests a stop at the next step instead of killing.

    With `jax.distributed` running, JAX's preemption notifier already catches SIGTERM and
    this installs nothing. Only the main thread can install a signal handler; elsewhere the
    block changes nothing.
    """
    global _handler_depth
    install = (
        not jax.distributed.is_initialized()
        and threading.current_thread() is threading.main_thread()
        and _handler_depth == 0
    )
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if install else None
    _handler_depth += 1
    try:
        yield
    finally:
        _handler_depth -= 1
        if install:
            signal.signal(signal.SIGTERM, previous)
            _requested.clear()


def armed() -> bool:
    """Whether a SIGTERM would request a stop rather than kill: inside `catch_sigterm`, or
    whenever `jax.distributed` runs (its notifier catches SIGTERM)."""
    return _handler_depth > 0 or jax.distributed.is_initialized()


def stop_requested() -> bool:
    """Whether training should stop now (at the same call on every process).

    Call it at the same points on every process (after each dispatched train call, or at
    each epoch boundary): with `jax.distributed`, each call is one step of JAX's preemption
    sync protocol.
    """
    if jax.distributed.is_initialized():
        from jax.experimental import multihost_utils

        return multihost_utils.reached_preemption_sync_point(next(_calls))
    return _requested.is_set()


def request_stop() -> None:
    """Requests a stop as a SIGTERM would (single process; for tests and embedding code)."""
    _requested.set()


def clear() -> None:
    """Forgets a stop request (single process), e.g. before resuming in the same process."""
    _requested.clear()
