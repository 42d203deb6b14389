"""Iterative magnitude pruning with rewinding (lottery tickets: Frankle & Carbin 2019, "The
lottery ticket hypothesis"; Frankle et al. 2020, "Linear mode connectivity and the lottery
ticket hypothesis", for rewinding to an early epoch).

With R = `rounds`, k = `rewind_epoch`, T = `round_epochs`: train k epochs of a T-epoch
schedule to the rewind point θ_k ("imp_rewind"); R times, train epochs k+1..T from θ_k with
the current mask ("imp_round<r>") and prune `rate` of the remaining prunable weights by
magnitude; then train θ_k ⊙ m_R with the mask for `final_epochs` ("pruned"). Rewinding
restores the whole epoch-k train state, with the mask applied to the parameters and to every
parameter-shaped optimizer buffer. Lottery-ticket controls (`control`): "reinit" (the IMP
mask on a fresh initialization) and "random_mask" (a random mask with IMP's survivor counts).

Masks stay data (`TrainState.mask`), so every round and the final phase reuse the compiled
train step. How a phase's epochs run is the caller's choice (`TrainPhases`): in memory
(`in_memory_phases`) or checkpointed and resumable (`jaxbd.runs.train_phase_group`). The
whole procedure: docs/imp.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from absl import logging

from jaxbd.prune.magnitude import SCOPES, magnitude_masks, random_masks
from jaxbd.prune.masks import Prunable, full_mask, is_kernel, sparsity
from jaxbd.settings import require
from jaxbd.train import CosineSchedule, DeviceData, EpochFn, Trainer, TrainState, init_variables
from jaxbd.types import PyTree

CONTROLS = ("none", "reinit", "random_mask")

EvaluateFn = Callable[[TrainState], dict[str, float]]

TrainPhases = Callable[..., tuple[list[TrainState], list[dict[str, Any]]]]
"""`train(name, states, shuffle_keys, epochs, evaluate_fns, eval_every) -> (states, rows)`:
trains member m's `states[m]` for `epochs` epochs (epoch e shuffled with
`fold_in(shuffle_keys[m], e)`), evaluating with `evaluate_fns[m]` (None: never) every
`eval_every` epochs and after the last; returns the final states and each member's last
epoch row (`loss`, `accuracy`, test metrics as `test_<name>`; empty after 0 epochs)."""

LogFn = Callable[[int, dict[str, Any]], None]
"""`log(member, row)`: receives IMP's own events (`{"event": "imp_round", ...}`)."""


@dataclasses.dataclass(frozen=True)
class IMPSettings:
    """The hyper-parameters of IMP with rewinding (defaults: the reference study).

    Attributes:
        rounds: prune-and-retrain rounds (≥ 1); sparsity after R rounds ≈ 1 − (1 − rate)^R.
        rate: fraction of the remaining prunable weights pruned per round, in (0, 1).
        scope: "layerwise" (rate per prunable kernel) or "global" (one threshold).
        rewind_epoch: epoch k whose state the survivors are rewound to (0: initialization).
        round_epochs: length T of each round's schedule, in epochs (> rewind_epoch).
        final_epochs: training epochs of the final sparse network.
        control: "none", "reinit" or "random_mask" (lottery-ticket controls).
    """

    rounds: int = 3
    rate: float = 0.3
    scope: str = "layerwise"
    rewind_epoch: int = 1
    round_epochs: int = 10
    final_epochs: int = 50
    control: str = "none"

    def __post_init__(self):
        require(self.rounds >= 1, "rounds", "must be >= 1", self.rounds)
        require(0.0 < self.rate < 1.0, "rate", "must be in (0, 1)", self.rate)
        require(self.scope in SCOPES, "scope", f"must be one of {SCOPES}", self.scope)
        require(self.rewind_epoch >= 0, "rewind_epoch", "must be >= 0", self.rewind_epoch)
        require(
            self.round_epochs > self.rewind_epoch,
            "round_epochs",
            f"must exceed rewind_epoch={self.rewind_epoch}",
            self.round_epochs,
        )
        require(self.final_epochs >= 1, "final_epochs", "must be >= 1", self.final_epochs)
        require(self.control in CONTROLS, "control", f"must be one of {CONTROLS}", self.control)


class IMPResult(NamedTuple):
    """What `run_imp` returns.

    Attributes:
        state: the trained final sparse network.
        mask: its bool mask (structure of the parameters).
        round_sparsity: total pruned fraction of the prunable weights after each round.
        sparsity: `masks.sparsity(mask)` of the final mask (total and per layer).
        last_row: the final phase's last log row (test metrics under `test_*`).
    """

    state: TrainState
    mask: PyTree
    round_sparsity: list[float]
    sparsity: dict[str, Any]
    last_row: dict[str, Any]


def rewind(state: TrainState, mask: PyTree, tx: optax.GradientTransformation) -> TrainState:
    """The train state `state` with `mask` applied: pruned parameters and their optimizer
    buffers (e.g. momentum) zeroed, and `mask` installed as the state's float mask.

    Every leaf of the result is a new array, so the rewind point can be rewound to again
    after the returned state has been donated to a train step.

    Args:
        state: the state to rewind to (e.g. the epoch-k state).
        mask: bool (or 0/1) pytree with the structure of `state.params`.
        tx: the optimizer whose state `state.opt_state` is (locates parameter-shaped
            buffers in any optax chain).
    """
    float_mask = jax.tree.map(lambda m: (m != 0).astype(np.float32), mask)
    # Masking makes new parameter and buffer arrays; every other leaf is copied.
    params = jax.tree.map(lambda p, m: p * m.astype(p.dtype), state.params, float_mask)
    opt_state = optax.tree_utils.tree_map_params(
        tx, lambda buffer, m: buffer * m.astype(buffer.dtype), state.opt_state, float_mask
    )
    rest = jax.tree.map(_copy, state.replace(params=None, opt_state=None, mask=None))
    return rest.replace(params=params, opt_state=opt_state, mask=float_mask)


def _copy(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(jax.random.key_data(x).copy(), impl=jax.random.key_impl(x))
    return x.copy() if isinstance(x, jax.Array) else x


def in_memory_phases(
    trainer: Trainer,
    datasets: Sequence[DeviceData],
    *,
    indices: Sequence[jax.Array] | None = None,
    epoch_fn: EpochFn | None = None,
) -> TrainPhases:
    """`TrainPhases` that train each member one after another in memory, writing nothing.

    Args:
        trainer: the compiled engine.
        datasets: each member's training data on the device.
        indices: optional int32[K] examples making up each member's epoch.
        epoch_fn: optional epoch function replacing `trainer.train_epoch`.
    """
    run_epoch = epoch_fn or trainer.train_epoch

    def train(name, states, shuffle_keys, epochs, evaluate_fns, eval_every):
        finals, rows = [], []
        for m, state in enumerate(states):
            row: dict[str, Any] = {}
            for epoch in range(1, epochs + 1):
                state, stats, _ = run_epoch(
                    state,
                    datasets[m],
                    jax.random.fold_in(shuffle_keys[m], epoch),
                    indices=None if indices is None else indices[m],
                    desc=f"{name} epoch {epoch}/{epochs}",
                )
                row = {
                    "phase": name,
                    "epoch": epoch,
                    "loss": stats.loss,
                    "accuracy": stats.accuracy,
                }
                due = epoch == epochs or (eval_every and epoch % eval_every == 0)
                if evaluate_fns[m] is not None and due:
                    row.update({f"test_{k}": v for k, v in evaluate_fns[m](state).items()})
            finals.append(state)
            rows.append(row)
        return finals, rows

    return train


def run_imp(
    trainer: Trainer,
    data: DeviceData,
    settings: IMPSettings,
    *,
    init_key: jax.Array,
    stream: Callable[[str], jax.Array],
    make_schedule: Callable[[int], CosineSchedule],
    image_shape: tuple[int, int, int],
    evaluate_fn: EvaluateFn | None = None,
    eval_every: int = 0,
    indices: jax.Array | None = None,
    epoch_fn: EpochFn | None = None,
    train_phases: TrainPhases | None = None,
    log: LogFn | None = None,
    prunable: Prunable = is_kernel,
) -> IMPResult:
    """Runs IMP with rewinding and trains the final sparse network.

    Args:
        trainer: the compiled engine.
        data: training data on the device (with per-example loss weights).
        settings: the IMP hyper-parameters.
        init_key: key of the initialization θ₀ (pass the dense run's to prune the network
            the dense arm started from).
        stream: `name -> key`, independent PRNG streams for shuffling, augmentation, the
            "reinit" initialization and the random mask (e.g. `rng.stream` of a seed).
        make_schedule: `epochs -> CosineSchedule` over that many epochs of this data.
        image_shape: (H, W, 3).
        evaluate_fn: test metrics of a state, evaluated in the final phase.
        eval_every: evaluation period of the final phase (0: only at its end).
        indices: optional int32[K] examples making up an epoch (a coreset).
        epoch_fn: optional epoch function replacing `trainer.train_epoch` in every phase
            (e.g. a training-time attack).
        train_phases: how phases run (`TrainPhases`; default `in_memory_phases` over
            `data`, `indices` and `epoch_fn`, which are then used by nothing else).
        log: optional `log(member, row)` for IMP's round events.
        prunable: which parameter leaves are pruned (default: conv and dense kernels).

    Returns:
        An `IMPResult`.
    """
    if train_phases is None:
        train_phases = in_memory_phases(
            trainer, [data], indices=None if indices is None else [indices], epoch_fn=epoch_fn
        )
    (result,) = run_imp_group(
        trainer,
        settings,
        init_keys=[init_key],
        streams=[stream],
        make_schedule=make_schedule,
        image_shape=image_shape,
        train_phases=train_phases,
        evaluate_fns=[evaluate_fn],
        eval_every=eval_every,
        log=log,
        prunable=prunable,
    )
    return result


def run_imp_group(
    trainer: Trainer,
    settings: IMPSettings,
    *,
    init_keys: Sequence[jax.Array],
    streams: Sequence[Callable[[str], jax.Array]],
    make_schedule: Callable[[int], CosineSchedule],
    image_shape: tuple[int, int, int],
    train_phases: TrainPhases,
    evaluate_fns: Sequence[EvaluateFn | None],
    eval_every: int = 0,
    log: LogFn | None = None,
    prunable: Prunable = is_kernel,
) -> list[IMPResult]:
    """`run_imp` for M independent runs of one shape (e.g. replicate seeds); member m's
    arguments are element m of each sequence, and `train_phases` trains all members of a
    phase (together, when it batches them). Masks are computed per member. With one member
    this is `run_imp`.
    """
    s, members = settings, range(len(init_keys))
    if not (len(streams) == len(evaluate_fns) == len(init_keys)):
        raise ValueError("run_imp_group needs one init key, stream and evaluate_fn per member")

    def phase(name, states, keys, epochs, evaluate, every):
        """Trains each member's `states[m]` through phase `name`."""
        return train_phases(name, states, keys, epochs, evaluate, every)

    no_eval = [None for _ in members]
    states0 = [
        trainer.init_state(
            init_keys[m],
            image_shape,
            make_schedule(s.round_epochs),
            rng=streams[m]("imp/augment/rewind"),
        )
        for m in members
    ]
    rewind_points, _ = phase(
        "imp_rewind",
        states0,
        [streams[m]("imp/shuffle/rewind") for m in members],
        s.rewind_epoch,
        no_eval,
        0,
    )

    masks = [full_mask(point.params) for point in rewind_points]
    round_sparsity = [[] for _ in members]
    if s.control == "random_mask":
        # IMP's survivor counts depend only on the shapes, rate and rounds: prune any
        # parameters R times (here the rewind point's) and draw a random mask with the
        # same counts.
        for m in members:
            for _ in range(s.rounds):
                masks[m] = magnitude_masks(
                    rewind_points[m].params,
                    s.rate,
                    scope=s.scope,
                    mask=masks[m],
                    prunable=prunable,
                )
                round_sparsity[m].append(sparsity(masks[m], prunable)["total"])
            masks[m] = random_masks(
                streams[m]("imp/random_mask"), masks[m], scope=s.scope, prunable=prunable
            )
    else:
        for r in range(1, s.rounds + 1):
            states = [
                trainer.replicate(
                    rewind(rewind_points[m], masks[m], trainer.tx).replace(
                        rng=streams[m](f"imp/augment/{r}")
                    )
                )
                for m in members
            ]
            states, _ = phase(
                f"imp_round{r}",
                states,
                [streams[m](f"imp/shuffle/{r}") for m in members],
                s.round_epochs - s.rewind_epoch,
                no_eval,
                0,
            )
            for m in members:
                masks[m] = magnitude_masks(
                    states[m].params, s.rate, scope=s.scope, mask=masks[m], prunable=prunable
                )
                round_sparsity[m].append(sparsity(masks[m], prunable)["total"])
                logging.info("IMP round %d/%d: sparsity %.4f", r, s.rounds, round_sparsity[m][-1])
                if log is not None:
                    log(m, {"event": "imp_round", "round": r, "sparsity": round_sparsity[m][-1]})

    finals = []
    for m in members:
        if s.control == "reinit":
            params, batch_stats = init_variables(
                trainer.model, streams[m]("imp/reinit"), image_shape
            )
        else:
            # The rewind point is not needed after this, so its buffers may be donated.
            params, batch_stats = rewind_points[m].params, rewind_points[m].batch_stats
        finals.append(
            trainer.new_state(
                params,
                batch_stats,
                make_schedule(s.final_epochs),
                rng=streams[m]("imp/augment/final"),
                mask=masks[m],
            )
        )
    finals, last_rows = phase(
        "pruned",
        finals,
        [streams[m]("imp/shuffle/final") for m in members],
        s.final_epochs,
        evaluate_fns,
        eval_every,
    )
    return [
        IMPResult(
            state=finals[m],
            mask=masks[m],
            round_sparsity=round_sparsity[m],
            sparsity=sparsity(masks[m], prunable),
            last_row=last_rows[m],
        )
        for m in members
    ]
