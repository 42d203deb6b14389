"""What the engine's loop reports: an epoch's statistics, the done part of a stopped one
(from which it resumes), and per-presentation correctness.

The summaries read the step outputs back once, at the end. A stopped and resumed run ends
with the statistics of an uninterrupted one bit for bit: the resumed summary reduces arrays
of the same shape and values (the done part's losses, and a correctness array with its count
of hits) with the same operations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class EpochStats(NamedTuple):
    """Host-side summary of one epoch.

    Attributes:
        loss: mean training loss over the epoch's steps.
        accuracy: fraction of augmented training views classified correctly.
        lr: learning rate of the last step.
        steps: steps taken.
        seconds: wall time of the epoch (dispatch to the last result).
        images_per_second: steps · batch_size / seconds.
        extra: further figures for the log, e.g. the epoch means of a custom loss's terms
            (`LossOutput.terms`) or a training-time attack's poisoned-step statistics.
        progress: None for a finished epoch; for one stopped at a preemption request
            (`preemptible=True`), its done part, from which a call with `resume=progress`
            continues (the other figures are then those of the done part).
    """

    loss: float
    accuracy: float
    lr: float
    steps: int
    seconds: float
    images_per_second: float
    extra: Mapping[str, Any] = {}
    progress: EpochProgress | None = None


class EpochProgress(NamedTuple):
    """The done part of an epoch (or step range) that stopped mid-way: what a mid-epoch
    checkpoint keeps besides the train state, so that the resumed epoch ends with the
    statistics of an uninterrupted one.

    Attributes:
        steps: steps of the epoch done (the position in the epoch's permutation).
        losses: the loss of each done step (float32 values).
        correct: presentations classified correctly in the done steps.
        terms: each loss term's per-step values (custom losses; empty for plain training).
        lr: the learning rate of the last done step.
        presented: for an epoch recording presentations, the done steps' per-presentation
            correctness (bool[steps, B] bit-packed, as hex: `pack`/`unpack`); else None.
    """

    steps: int
    losses: tuple[float, ...]
    correct: int
    terms: Mapping[str, tuple[float, ...]]
    lr: float
    presented: str | None = None

    @staticmethod
    def pack(correct: np.ndarray) -> str:
        """bool[steps, B] as the hex string `presented` holds."""
        return np.packbits(np.asarray(correct, bool).reshape(-1)).tobytes().hex()

    def unpack(self, batch_size: int) -> np.ndarray:
        """`presented` back as bool[steps, batch_size]."""
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(self.presented), np.uint8))
        return bits[: self.steps * batch_size].astype(bool).reshape(self.steps, batch_size)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict (`from_json` reads it back exactly)."""
        d = {
            "steps": self.steps,
            "losses": list(self.losses),
            "correct": self.correct,
            "terms": {k: list(v) for k, v in self.terms.items()},
            "lr": self.lr,
        }
        if self.presented is not None:
            d["presented"] = self.presented
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EpochProgress:
        return cls(
            steps=int(d["steps"]),
            losses=tuple(float(x) for x in d["losses"]),
            correct=int(d["correct"]),
            terms={k: tuple(float(x) for x in v) for k, v in d["terms"].items()},
            lr=float(d["lr"]),
            presented=None if d.get("presented") is None else str(d["presented"]),
        )


class Presentations(NamedTuple):
    """Per-presentation correctness of one epoch, on the device (for forgetting scores).

    Attributes:
        indices: int32[steps, B] example index of each presentation, in step order.
        correct: bool[steps, B] whether it was classified correctly in that step.
    """

    indices: jax.Array
    correct: jax.Array


EpochFn = Callable[..., "tuple[Any, EpochStats, Presentations | None]"]
"""`epoch_fn(state, data, key, *, indices, desc, record_presentations) -> (state, stats,
presentations)`, like `Trainer.train_epoch`: what a training phase runs each epoch (a
training-time attack supplies its own)."""


def progress_of(
    resume: EpochProgress | None, outs, steps_done: int, *, presented: bool = False
) -> EpochProgress:
    """The done part: `resume`'s and that of the step outputs `outs` (one read back), with
    the per-presentation correctness if `presented`."""
    losses, correct, terms, lr = jax.device_get(
        (
            jnp.concatenate([o.loss for o in outs]),
            jnp.sum(jnp.concatenate([o.correct for o in outs])),
            {k: jnp.concatenate([o.terms[k] for o in outs]) for k in outs[0].terms},
            outs[-1].lr[-1],
        )
    )
    before = resume or EpochProgress(0, (), 0, {}, 0.0)
    packed = None
    if presented:
        now = jax.device_get(jnp.concatenate([o.correct for o in outs]))
        if before.steps:
            now = np.concatenate([before.unpack(now.shape[1]), now])
        packed = EpochProgress.pack(now)
    return EpochProgress(
        steps=steps_done,
        losses=before.losses + tuple(float(x) for x in losses),
        correct=before.correct + int(correct),
        terms={k: before.terms.get(k, ()) + tuple(float(x) for x in v) for k, v in terms.items()},
        lr=float(lr),
        presented=packed,
    )


def epoch_stats(progress: EpochProgress, ran: int, started: float, batch_size: int) -> EpochStats:
    """An epoch's statistics from all of its steps so far (`progress`); `ran` of them ran
    in this call, which is what the throughput counts."""
    # The same reductions, over arrays of the same shape, whether or not the epoch was
    # stopped and resumed in between: the figures are bit-identical either way.
    losses = np.asarray(progress.losses, np.float32)
    loss = jnp.mean(jnp.asarray(losses))
    accuracy = np.float32(progress.correct) / np.float32(progress.steps * batch_size)
    terms = {k: jnp.mean(jnp.asarray(np.asarray(v, np.float32))) for k, v in progress.terms.items()}
    loss, terms = jax.device_get((loss, terms))
    seconds = time.perf_counter() - started
    return EpochStats(
        loss=float(loss),
        accuracy=float(accuracy),
        lr=progress.lr,
        steps=progress.steps,
        seconds=seconds,
        images_per_second=ran * batch_size / seconds,
        extra={k: float(v) for k, v in terms.items()},
    )


def hits(count: int, shape: tuple[int, ...]) -> np.ndarray:
    """bool[shape] with `count` True entries: a done part's correctness as the summaries
    reduce it (a sum of ones is exact in float32 whatever their positions)."""
    flat = np.zeros(int(np.prod(shape)), bool)
    flat[:count] = True
    return flat.reshape(shape)


def _joined(before: np.ndarray, now: Sequence[np.ndarray]) -> list[jax.Array]:
    """[the done part's values followed by this call's], as one device array in a list."""
    return [jnp.asarray(np.concatenate([before, *now]))]


def step_stats(
    outs,
    steps: int,
    ran: int,
    started: float,
    batch_size: int,
    resume: EpochProgress | None = None,
) -> EpochStats:
    """Statistics of a step range from its step outputs (one read back), after the done
    part `resume` of the range if it was stopped and resumed."""
    losses = [o.loss for o in outs]
    correct = [o.correct for o in outs]
    terms = {k: [o.terms[k] for o in outs] for k in outs[0].terms}
    if resume is not None:
        # Joined on the host, then the same reductions over arrays of the uninterrupted
        # shapes and values.
        losses, correct, terms = jax.device_get((losses, correct, terms))
        losses = _joined(np.asarray(resume.losses, np.float32), losses)
        correct = _joined(hits(resume.correct, (resume.steps, batch_size)), correct)
        terms = {k: _joined(np.asarray(resume.terms[k], np.float32), v) for k, v in terms.items()}
    loss = jnp.mean(jnp.concatenate(losses))
    accuracy = jnp.mean(jnp.concatenate(correct))
    terms = {k: jnp.mean(jnp.concatenate(v)) for k, v in terms.items()}
    loss, accuracy, lr, terms = jax.device_get((loss, accuracy, outs[-1].lr[-1], terms))
    seconds = time.perf_counter() - started
    return EpochStats(
        loss=float(loss),
        accuracy=float(accuracy),
        lr=float(lr),
        steps=steps,
        seconds=seconds,
        images_per_second=ran * batch_size / seconds,
        extra={k: float(v) for k, v in terms.items()},
    )


def member_stats(
    outs,
    steps: int,
    ran: int,
    started: float,
    batch_size: int,
    resume: Sequence[EpochProgress] | None = None,
) -> list[EpochStats]:
    """Each member's statistics of an ensemble epoch (step outputs with a leading member
    axis), after the members' done parts `resume` if it was stopped and resumed."""
    loss = jnp.concatenate([o.loss for o in outs], axis=1)  # [M, steps]
    correct = jnp.concatenate([o.correct for o in outs], axis=1)  # [M, steps, B]
    lr = outs[-1].lr[:, -1]
    if resume is not None:
        done = resume[0].steps
        before = np.stack([np.asarray(p.losses, np.float32) for p in resume])
        hit = np.stack([hits(p.correct, (done, batch_size)) for p in resume])
        loss_now, correct_now = jax.device_get((loss, correct))
        loss = jnp.asarray(np.concatenate([before, loss_now], axis=1))
        correct = jnp.asarray(np.concatenate([hit, correct_now], axis=1))
    loss, accuracy, lr = jax.device_get(
        (jnp.mean(loss, axis=1), jnp.mean(correct, axis=(1, 2)), lr)
    )
    seconds = time.perf_counter() - started
    return [
        EpochStats(
            loss=float(loss[m]),
            accuracy=float(accuracy[m]),
            lr=float(lr[m]),
            steps=steps,
            seconds=seconds,
            images_per_second=len(lr) * ran * batch_size / seconds,
        )
        for m in range(len(lr))
    ]


def member_progress(
    resume: Sequence[EpochProgress] | None, outs, steps_done: int
) -> list[EpochProgress]:
    """Each member's done part of a stopped ensemble epoch (one read back)."""
    members = int(outs[0].loss.shape[0])
    return [
        progress_of(
            None if resume is None else resume[m],
            [jax.tree.map(lambda x, m=m: x[m], o) for o in outs],
            steps_done,
        )
        for m in range(members)
    ]
