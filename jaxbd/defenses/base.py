"""What every repair shares: its context, its plan, and the protocol a repair implements.

A repair (fine-tuning, Fine-Pruning, NAD, Neural Cleanse, Pivotal Tuning, ...) is a frozen
dataclass of hyper-parameters, checked when it is constructed (`FineTune(steps=500)`), whose
`plan(ctx, variables)` does the method's own work (ranking and pruning channels, training a teacher,
reverse-engineering triggers) and returns a `TuningPlan`: the variables to start from, the
train-step variant (its loss, with extra traced inputs such as a teacher's or a pivot's
variables), the data to tune on and the step budget. The shared tuning loop
(`jaxbd.defenses.tuning.tune`) then runs it with the trade-off curve and the Δ budget, so
every repair stops, records and returns its model the same way.

Nothing here reads test data. `RepairContext.validate` is the held-out accuracy every
decision uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.defenses.defender_data import DefenderData
from jaxbd.train import PLAIN, DeviceData, StepVariant, Trainer

PyTree = Any


@flax.struct.dataclass
class Variables:
    """A model's variables: parameters, BatchNorm statistics, and its pruning mask (float
    0/1 pytree like the parameters; all ones when dense). A pytree (checkpointable)."""

    params: PyTree
    batch_stats: PyTree
    mask: PyTree


@dataclasses.dataclass
class RepairContext:
    """What a repair may use.

    Attributes:
        trainer: the engine, built with the repair's optimizer (momentum, weight decay) and
            batch size; its model returns `(logits, features)` and sows "intermediates".
        defender: the defender's images (host).
        tune_data: `defender.tune` on the devices (None when the defender has no images:
            a data-free repair).
        key: the repair's PRNG stream (split it for its own random choices).
        validate: `validate(params, batch_stats) -> float`, accuracy on the defender's
            held-out images (the only data a decision may read); None without images.
        num_classes: C.
        trigger: the attack's test-time transform `(key, images, labels) -> (images,
            labels)`, given only to a repair that declares trigger knowledge
            (`needs_trigger = True`) and only when the configuration grants it; None
            otherwise. A repair keeps the true labels of what it triggers.
    """

    trainer: Trainer
    defender: DefenderData
    tune_data: DeviceData | None
    key: jax.Array
    validate: Callable[[PyTree, PyTree], float] | None
    num_classes: int
    trigger: Callable | None = None

    def features(self, params, batch_stats, images) -> tuple[jax.Array, jax.Array]:
        """(logits, features) of `images` in inference mode."""
        return self.trainer.predict_variables(params, batch_stats, images)


@dataclasses.dataclass(frozen=True)
class Candidates:
    """The alternatives a method weighed before its choice (ANP's thresholds, CLP's u grid),
    built one at a time so that only one extra model is alive at once.

    The method chose among them on the defender's validation images (or, data-free, by its
    own rule); a pipeline may evaluate every candidate on the *test* set to report the choice
    the reference implementations make there — an oracle, named `oracle_*`, never used for
    the returned model.

    Attributes:
        labels: one JSON-able mapping per candidate (e.g. {"threshold": 0.2, "num_pruned":
            31, "val_accuracy": 0.84}), in the method's order.
        build: `build(i) -> Variables`, the i-th candidate's model (its mask applied).
    """

    labels: tuple[Mapping[str, Any], ...]
    build: Callable[[int], Variables]


@dataclasses.dataclass(frozen=True)
class TuningPlan:
    """What the shared tuning loop runs.

    Attributes:
        variables: the starting model (its mask is kept through tuning).
        data: the examples tuned on (on the devices).
        steps: the step budget (0: nothing to tune; the model is returned as planned).
        lr: the learning rate (constant, or cosine to 0 when `cosine`).
        cosine: cosine decay of the learning rate over `steps`.
        variant: the train-step variant (its loss and how a batch is formed).
        extra: the pytree passed to every step's loss (e.g. a teacher's variables).
        details: what the method decided, for the summary (JSON-able).
        candidates: the alternatives it chose among (`Candidates`), for oracle figures;
            None for a method without a discrete choice.
    """

    variables: Variables
    data: DeviceData
    steps: int
    lr: float
    cosine: bool = False
    variant: StepVariant = PLAIN
    extra: Any = None
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    candidates: Candidates | None = None


class Repair(Protocol):
    """A repair: hyper-parameters plus the method's planning step."""

    name: str
    momentum: float
    weight_decay: float
    batch_size: int
    # Optional class attributes: `data_free = True` for a repair that needs no images (then
    # the defender may have none, `fraction = 0`, and its plan must have steps = 0);
    # `needs_trigger = True` for one that assumes the defender knows the trigger.

    def plan(self, ctx: RepairContext, variables: Variables) -> TuningPlan:
        """Does the method's own work and says what to tune."""
        ...


def copy_tree(tree: PyTree) -> PyTree:
    """A fresh copy of every array (so a donated state never aliases a kept one)."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def jsonable(value: Any) -> Any:
    """NumPy/JAX values as plain Python, for a summary."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        value = np.asarray(value)
        return value.tolist() if value.ndim else value.item()
    return value
