"""What a Parameter-Controlled Backdoor epoch reports: the clean and the poisoned steps'
figures, and the done part of an epoch stopped at a preemption request.

The done part is an `EpochProgress`: every done step's loss in step order, the clean steps'
hits in `correct`, and each poisoned step's hits on its triggered examples in
`terms["poison_correct"]`. A resumed epoch ends with the figures of an uninterrupted one:
the same reductions over arrays of the same shapes and values.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.train import EpochProgress
from jaxbd.train.stats import hits

POISON_CORRECT = "poison_correct"
"""The done part's term holding each poisoned step's hits on its triggered examples."""


class AlternatingEpochStats(NamedTuple):
    """Host-side summary of one alternating (clean / poisoned) epoch.

    Attributes:
        clean_loss: mean training loss over the clean steps (nan if there were none).
        clean_accuracy: fraction of the clean steps' augmented views classified correctly.
        poison_loss: mean training loss over the poisoned steps (whole batches, including
            their clean examples).
        poison_accuracy: fraction of the poisoned steps' *triggered* examples classified as
            their (target) label — the attack's success on its own training views.
        lr: learning rate of the last step.
        clean_steps: clean steps taken.
        poison_steps: poisoned steps taken.
        seconds: wall time of the epoch.
        images_per_second: (clean_steps + poison_steps) · batch_size / seconds.
        progress: None for a finished epoch; the done part of one stopped at a preemption
            request (the other figures are then those of the done part).
    """

    clean_loss: float
    clean_accuracy: float
    poison_loss: float
    poison_accuracy: float
    lr: float
    clean_steps: int
    poison_steps: int
    seconds: float
    images_per_second: float
    progress: EpochProgress | None = None


def device_summary(clean_out, poison_out, last_lr: jax.Array, k: int):
    """((clean loss, accuracy), (poison loss, accuracy on the triggered examples), last lr)
    of an epoch run in one go, from its step outputs on the device (one read back)."""

    def summary(outs, columns):
        if not outs:
            return jnp.float32(jnp.nan), jnp.float32(jnp.nan)
        loss = jnp.mean(jnp.concatenate([o.loss for o in outs]))
        correct = jnp.concatenate([o.correct for o in outs])[:, columns]
        return loss, jnp.mean(correct)

    # Poisoned batches hold their triggered examples first (`poisoned_step_variant`).
    return jax.device_get(
        (summary(clean_out, slice(None)), summary(poison_out, slice(0, k)), last_lr)
    )


def done_part(
    resume: EpochProgress | None, outs, kinds, poisoned: np.ndarray, k: int, batch_size: int
):
    """The figures of every step done so far, from the done part `resume` and this call's
    step outputs `outs` (of the calls of `kinds`, True for poisoned), on the host.

    Returns:
        (((clean loss, accuracy), (poison loss, accuracy), last lr), progress).
    """
    before = resume or EpochProgress(0, (), 0, {POISON_CORRECT: ()}, 0.0)
    was_poisoned = poisoned[: before.steps]
    losses = np.asarray(before.losses, np.float32)
    clean_loss, poison_loss = [losses[~was_poisoned]], [losses[was_poisoned]]
    clean_hits = [hits(before.correct, (int((~was_poisoned).sum()), batch_size))]
    poison_hits = [hits(int(sum(before.terms[POISON_CORRECT])), (int(was_poisoned.sum()), k))]
    step_losses, poison_correct = list(before.losses), list(before.terms[POISON_CORRECT])
    for out, kind in zip(jax.device_get(outs), kinds, strict=True):
        step_losses += [float(x) for x in out.loss]
        if kind:
            poison_loss.append(out.loss)
            poison_hits.append(out.correct[:, :k])
            poison_correct += [float(x) for x in out.correct[:, :k].sum(axis=1)]
        else:
            clean_loss.append(out.loss)
            clean_hits.append(out.correct)
    lr = float(jax.device_get(outs[-1].lr[-1]))
    progress = EpochProgress(
        steps=len(step_losses),
        losses=tuple(step_losses),
        correct=int(sum(int(h.sum()) for h in clean_hits)),
        terms={POISON_CORRECT: tuple(poison_correct)},
        lr=lr,
    )

    def summary(loss, correct):
        loss, correct = np.concatenate(loss), np.concatenate(correct)
        if not len(loss):
            return np.float32(np.nan), np.float32(np.nan)
        return jax.device_get((jnp.mean(jnp.asarray(loss)), jnp.mean(jnp.asarray(correct))))

    return (summary(clean_loss, clean_hits), summary(poison_loss, poison_hits), lr), progress
