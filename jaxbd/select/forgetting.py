"""Forgetting events (Toneva et al. 2019, "An empirical study of example forgetting during
deep neural network learning").

Each time an example is presented in a training step, the step records whether its augmented
view was classified correctly (`Trainer.train_epoch(record_presentations=True)` returns these
on the device). A forgetting event is a transition correct → incorrect between consecutive
presentations of the same example. Examples never classified correctly get +∞: they are the
most forgettable (the paper's convention). `update` folds one epoch's presentations into the
counts on the device, in step order, so nothing per step goes to the host.

The earlier study's variant instead checked correctness once per epoch (on the un-augmented
training set), scored never-learned examples 0 and kept the easiest; `update` works for it
too, with one "presentation" per example per epoch, and `scores(never_learned=0.0)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.select.method import Inputs, Method
from jaxbd.select.ranking import check_keep, rank_inputs, rank_within_class


@flax.struct.dataclass
class ForgettingState:
    """Per-example forgetting statistics (all indexed by canonical example index).

    Attributes:
        last_correct: bool[N], whether the latest presentation was classified correctly.
        forgets: int32[N], forgetting events so far.
        learned: bool[N], whether any presentation was classified correctly.
        presentations: int32[N], presentations so far.
    """

    last_correct: jax.Array
    forgets: jax.Array
    learned: jax.Array
    presentations: jax.Array


def init(num_examples: int) -> ForgettingState:
    """Statistics before any presentation."""
    return ForgettingState(
        last_correct=jnp.zeros((num_examples,), bool),
        forgets=jnp.zeros((num_examples,), jnp.int32),
        learned=jnp.zeros((num_examples,), bool),
        presentations=jnp.zeros((num_examples,), jnp.int32),
    )


@jax.jit
def update(state: ForgettingState, indices: jax.Array, correct: jax.Array) -> ForgettingState:
    """Folds presentations into the statistics, in order.

    Args:
        state: the statistics so far.
        indices: int32[S, B], example index of each presentation; S steps of B examples,
            with no index repeated within a step (an epoch's permutation guarantees this).
        correct: bool[S, B], whether each presentation was classified correctly.

    Returns:
        The updated statistics.
    """

    def step(state, batch):
        idx, ok = batch
        was = state.last_correct[idx]
        return (
            ForgettingState(
                last_correct=state.last_correct.at[idx].set(ok),
                forgets=state.forgets.at[idx].add((was & ~ok).astype(jnp.int32)),
                learned=state.learned.at[idx].set(state.learned[idx] | ok),
                presentations=state.presentations.at[idx].add(1),
            ),
            None,
        )

    state, _ = jax.lax.scan(step, state, (indices.astype(jnp.int32), correct.astype(bool)))
    return state


def scores(state: ForgettingState, *, never_learned: float = float("inf")) -> np.ndarray:
    """Forgetting scores on the host: the number of forgetting events, and `never_learned`
    for examples never classified correctly (+∞ by default: most forgettable).

    Returns:
        float64[N].
    """
    forgets, learned = jax.device_get((state.forgets, state.learned))
    return np.where(learned, forgets.astype(np.float64), never_learned)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ForgettingSettings:
    """Forgetting scores (Toneva et al. 2019, "An empirical study of example forgetting
    during deep neural network learning").

    Attributes:
        keep: "hard" (most forgotten, never learned first) or "easy" (`KEEP`).
        offset: fraction of each class's ranking skipped first, in [0, 1).
    """

    keep: str = "hard"
    offset: float = 0.0

    def __post_init__(self):
        check_keep(self.keep, self.offset)


def forgetting_settings(select: Any) -> dict[str, Any]:
    """The effective settings (`SelectSettings.effective`): per-presentation checks and
    never-learned scored +∞ with `select.forgetting`'s keep policy, or with `variant="study"`
    the earlier study's: one check per epoch, never-learned scored 0, keep the easiest.

    Returns:
        per_epoch, never_learned, keep, offset.
    """
    if select.variant == "study":
        return dict(per_epoch=True, never_learned=0.0, keep="easy", offset=0.0)
    f = select.forgetting
    return dict(per_epoch=False, never_learned=float("inf"), keep=f.keep, offset=f.offset)


def _run(inputs: Inputs) -> tuple:
    """Forgetting scores of pretraining member 0, ranked within each class."""
    record, settings = inputs.records[0], inputs.effective
    if not settings["per_epoch"]:
        return rank_inputs(inputs, scores(record.forgetting))
    # The study's variant: one check per epoch on the un-augmented set, in epoch order.
    correct = record.correct
    n = correct.shape[1]
    state = update(
        init(n),
        jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), correct.shape),
        correct,
    )
    return rank_inputs(inputs, scores(state, never_learned=settings["never_learned"]))


METHOD = Method(
    selector=rank_within_class,
    run=_run,
    presentations=True,
    section="forgetting",
    settings=ForgettingSettings,
    variants=True,
    effective=forgetting_settings,
)
"""One pretraining run, every presentation's correctness recorded."""
