"""The engine's one loop: a schedule of calls to compiled step functions, dispatched in order.

Every way the engine trains — an epoch (`Trainer.train_epoch`), a step range
(`Trainer.train_steps`), an ensemble epoch (`Trainer.train_epoch_ensemble`) and a
training-time attack's alternating epoch (`jaxbd.attacks.pcb_training`) — builds its
schedule of `Call`s and runs it with `run_calls`, which does what they share: the progress
bar and its throughput, the timing, the one-call-late read-back of the loss shown, and
preemption (stop after the current call at a requested stop, at the same calls on every
process). What a caller reads back from the step outputs is its own (`jaxbd.train.stats`).

Dispatch is asynchronous: the host queues calls and reads a result only when the call after
it is already queued, so the device never waits for the host.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from jaxbd.train import preemption
from jaxbd.train.epoch_order import largest_divisor_at_most
from jaxbd.types import PyTree


class Call(NamedTuple):
    """One dispatch of the schedule: `fn(state, *args) -> (state, StepOutput)`, running
    `steps` steps (every leaf of the output has them on its step axis)."""

    fn: Callable
    args: tuple
    steps: int


class Ran(NamedTuple):
    """What `run_calls` did.

    Attributes:
        state: the state after the last call that ran.
        outs: the step outputs of the calls that ran, in order (still on the device).
        done: the steps done, counting the `initial` ones.
        stopped: whether it stopped at a preemption request before the schedule's end.
        started: `time.perf_counter()` when the first call was dispatched.
    """

    state: Any
    outs: list
    done: int
    stopped: bool
    started: float


def chunk_size(steps: int, done: int, steps_per_call: int) -> int:
    """Steps per call for `steps` steps of which `done` are done: the largest divisor of
    `steps` at most `steps_per_call` (every call of one shape), or, for a run resumed with
    another `steps_per_call` at a step that is no multiple of it, of the steps left."""
    chunk = largest_divisor_at_most(steps, steps_per_call)
    if done % chunk:
        chunk = largest_divisor_at_most(steps - done, steps_per_call)
    return chunk


def chunked(
    fn: Callable,
    data: PyTree,
    rows: jax.Array,
    *,
    start: int,
    stop: int,
    chunk: int,
    tail: tuple = (),
    axis: int = 0,
) -> Iterator[Call]:
    """The calls `fn(state, data, rows[start : start + chunk], *tail)`, ... up to `stop`,
    slicing `rows` along `axis` (1 for a leading member axis), each as it is dispatched."""
    lead = (slice(None),) * axis
    for first in range(start, stop, chunk):
        yield Call(fn, (data, rows[(*lead, slice(first, first + chunk))], *tail), chunk)


def run_calls(
    state: PyTree,
    calls: Iterable[Call],
    *,
    total: int,
    initial: int = 0,
    desc: str,
    progress: bool,
    images_per_step: int,
    preemptible: bool = False,
) -> Ran:
    """Dispatches `calls` in order, threading the state through them.

    Args:
        state: the state the first call takes (donated by the compiled functions).
        calls: the schedule, consumed lazily; its steps add up to `total - initial`.
        total: steps of the whole epoch or range (the progress bar's length).
        initial: steps of it done before (a resumed run).
        desc: progress-bar label.
        progress: show a progress bar with the loss of the previous call (read one call
            late, when it is finished, so it never stalls the device) and the throughput.
        images_per_step: images a step trains on (for the throughput shown).
        preemptible: stop after a call when `preemption.stop_requested()` says so: asked
            after every call but the last, at the same calls on every process, with at most
            one call queued behind the running one.

    Returns:
        `Ran`: the state, the step outputs, the steps done and whether it stopped.
    """
    outs = []
    done = initial
    bar = tqdm(
        total=total, initial=initial, desc=desc, unit="step", disable=not progress, leave=False
    )
    started = time.perf_counter()
    for call in calls:
        state, out = call.fn(state, *call.args)
        outs.append(out)
        done += call.steps
        if progress:
            postfix = {}
            if len(outs) > 1:  # the previous call is finished: reading it never stalls
                postfix["loss"] = f"{float(jnp.mean(outs[-2].loss)):.4f}"
            elapsed = time.perf_counter() - started
            postfix["img/s"] = f"{(done - initial) * images_per_step / elapsed:.0f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(call.steps)
        if preemptible and done < total:
            if len(outs) > 1:
                # Without a wait the host would queue the whole schedule at once and ask
                # about a stop long before the steps run. Waiting for the previous call
                # keeps one call queued behind the running one (the device stays busy), so
                # a stop lands within two calls of the request.
                jax.block_until_ready(outs[-2].loss)
            if preemption.stop_requested():
                break
    bar.close()
    return Ran(state, outs, done, done < total, started)
