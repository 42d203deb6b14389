"""The Parameter-Controlled Backdoor (Lukas & Kerschbaum 2023, "Pick your Poison").

A training-time (supply-chain) attack: the attacker runs the training. It alternates clean
steps, which update every parameter on clean data, with poisoned steps, whose batches carry
triggered examples labelled with the target and which update only a random, fixed subset of
the parameters — a fraction p of each parameter tensor. The backdoor's information thus
enters the model only through that subset.

The training set stays clean: the poisoned examples come from a separate pool
(`poison_source`). At test time the attack is just its trigger, so `triggered_test_set` and
ASR work unchanged. Its training loop lives in `jaxbd.attacks.pcb_training`; `make_epoch_fn`
hands it to a training phase.

What follows the authors' code and what differs (the count per tensor, `update_mask_mode`,
`trigger_stage`, the default p), and why a large learning rate can blow the weights up:
docs/attacks.md, "Parameter-Controlled Backdoor".
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.attacks import pcb_training
from jaxbd.attacks.badnets import badnets
from jaxbd.attacks.base import Attack, AttackFn
from jaxbd.attacks.poison import poison_dataset
from jaxbd.data.dataset import Dataset
from jaxbd.train.step import UPDATE_MASK_MODES

if TYPE_CHECKING:
    from jaxbd.train import DeviceData, EpochFn, Trainer, TrainState

PyTree = Any

SCOPES = ("leaf", "global")
"""How the controlled parameters are drawn: a fraction of every leaf, or of all entries."""

TRIGGER_STAGES = ("after_augment", "before_augment")
"""When the poisoned steps' examples get the trigger: in the step, after augmentation (the
reference code), or once, on the stored copies."""


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class ParameterControlledBackdoor:
    """A Parameter-Controlled Backdoor: a data trigger plus a fixed parameter subset.

    It exposes the `Attack` interface (`name`, `target`, `clean_label`, `train_fn`,
    `test_fn`, `params`, `__call__`, `apply_test`, `description`), all delegating the image
    transforms to `trigger`, so test-set triggering and ASR treat it like any attack. It is
    not an `Attack` instance on purpose: `poison_dataset` must not be used with it (the
    training set stays clean; poisoned steps draw from `poison_source`).

    Equality and hashing are by identity (`eq=False`): it holds arrays.

    Attributes:
        trigger: the data trigger, used to build the poisoned examples and at test time.
        update_mask: float32 pytree with the structure and leaf shapes of the model's
            parameters: 1 for the parameters the poisoned steps may update, 0 elsewhere.
        param_fraction: p, the fraction of parameters selected.
        scope: "leaf" (round(p · size) ones in every leaf) or "global" (round(p · total)
            ones over all parameters, wherever they fall).
        poison_every: every `poison_every`-th training step is poisoned, starting with the
            first of each epoch (2: the reference's 1:1 alternation).
        poison_batch_ratio: fraction of a poisoned batch that is triggered (the rest keeps
            its clean examples); see `poison_batch_size`.
        update_mask_mode: "gradient" (the reference: a poisoned step masks only the loss
            gradient, so momentum and weight decay still move every parameter) or "freeze"
            (the unselected parameters and their momentum buffers stay bit-identical during
            a poisoned step); see docs/attacks.md.
        trigger_stage: "after_augment" (the reference: the engine stamps the trigger on the
            poison rows of each poisoned batch after cropping and flipping) or
            "before_augment" (the pool holds triggered copies, so crops shift the patch and
            flips mirror it); see docs/attacks.md.
        name: "pcb".
    """

    trigger: Attack
    update_mask: PyTree
    param_fraction: float
    scope: str = "leaf"
    poison_every: int = 2
    poison_batch_ratio: float = 0.1
    update_mask_mode: str = "gradient"
    trigger_stage: str = "after_augment"
    name: str = "pcb"

    # -- the Attack interface --------------------------------------------------------------

    @property
    def target(self) -> int:
        """The target class (the trigger's)."""
        return self.trigger.target

    @property
    def clean_label(self) -> bool:
        """The trigger's: whether its poisons keep their labels (then the pool holds
        target-class images only, see `poison_source`)."""
        return self.trigger.clean_label

    @property
    def train_fn(self) -> AttackFn:
        """The trigger's training-time transform (used by `poison_source`)."""
        return self.trigger.train_fn

    @property
    def test_fn(self) -> AttackFn:
        """The trigger's test-time transform: ASR is measured exactly as for the trigger."""
        return self.trigger.test_fn

    @property
    def params(self) -> tuple[tuple[str, Any], ...]:
        """The hyper-parameters as `(name, value)` pairs, for run metadata."""
        return (
            ("param_fraction", self.param_fraction),
            ("scope", self.scope),
            ("poison_every", self.poison_every),
            ("poison_batch_ratio", self.poison_batch_ratio),
            ("update_mask_mode", self.update_mask_mode),
            ("trigger_stage", self.trigger_stage),
            ("trigger", self.trigger.description),
        )

    def __call__(
        self, key: jax.Array, images: jax.Array, labels: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Applies the trigger's training-time transform (see `Attack.__call__`)."""
        return self.train_fn(key, images, labels)

    def apply_test(
        self, key: jax.Array, images: jax.Array, labels: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Applies the trigger's test-time transform (see `Attack.apply_test`)."""
        return self.test_fn(key, images, labels)

    @property
    def description(self) -> str:
        """A one-line summary, e.g. "pcb(target=0, param_fraction=0.1, ...)"."""
        args = ", ".join(f"{k}={v!r}" for k, v in (("target", self.target), *self.params))
        return f"{self.name}({args})"

    # -- training ------------------------------------------------------------------------

    @property
    def num_selected(self) -> int:
        """How many parameters the poisoned steps may update (reads the mask to the host)."""
        return int(sum(np.sum(jax.device_get(m)) for m in jax.tree.leaves(self.update_mask)))

    def poison_batch_size(self, batch_size: int) -> int:
        """Triggered examples per poisoned batch of `batch_size`: `int(ratio · B)` as in the
        reference code, but at least 1."""
        return max(1, int(self.poison_batch_ratio * batch_size))

    def poison_source(
        self,
        key: jax.Array,
        train: Dataset,
        *,
        fraction: float = 1.0,
        exclude_target: bool = False,
    ) -> Dataset:
        """The pool of examples the poisoned steps sample from.

        Copies of a random `fraction` of the training images (the candidates
        `poison_dataset` draws for the trigger: a clean-label trigger draws target-class
        images only). With `trigger_stage="before_augment"` they are triggered
        (`trigger.train_fn`) and labelled as `poison_dataset` labels the trigger's poisons;
        with "after_augment" they keep their images and labels, and the engine applies
        `trigger.train_fn` to them in each poisoned step, after augmentation. The default,
        every training image, matches the reference, which may trigger any training image
        in any epoch; a smaller pool costs less device memory (the pool is a second uint8
        image array).

        Args:
            key: PRNG key (a stream of its own, e.g. `rng.stream(seed, "pcb_pool")`).
            train: the clean training set.
            fraction: in (0, 1], of the candidates (see `poison_dataset`).
            exclude_target: only copy images whose label is not the target.

        Returns:
            A `Dataset` of the copies, in increasing order of their source index; put it on
            the devices with `Trainer.put(pool.images, pool.labels)`.

        Raises:
            ValueError: if the pool would be empty, or as `poison_dataset` does.
        """
        poisoned = poison_dataset(
            key, train, self.trigger, fraction=fraction, exclude_target=exclude_target
        )
        chosen = poisoned.poison_indices
        if chosen.size == 0:
            raise ValueError(
                f"pcb: fraction={fraction} of {len(train)} training images gives an empty "
                f"poison pool"
            )
        source = train if self.trigger_stage == "after_augment" else poisoned.dataset
        state = "clean, triggered in the step" if source is train else "triggered"
        return Dataset(
            images=source.images[chosen],
            labels=source.labels[chosen],
            num_classes=train.num_classes,
            class_names=train.class_names,
            source=f"{train.source} | pcb pool: {chosen.size} copies, {state} "
            f"({self.trigger.description})",
        )

    def train_epoch(
        self,
        trainer: Trainer,
        state: TrainState,
        clean_data: DeviceData,
        poison_data: DeviceData,
        key: jax.Array,
        *,
        indices: jax.Array | None = None,
        update_mask: PyTree | None = None,
        desc: str = "train+pcb",
    ) -> tuple[TrainState, pcb_training.AlternatingEpochStats]:
        """One epoch of PCB training: `pcb_training.train_epoch_alternating` with this attack's
        schedule, poisoned batch size, update mask and mode, and (trigger stage
        "after_augment") the trigger as the poison transform.

        Args:
            trainer: the engine.
            state: the train state; donated.
            clean_data: the clean training set on the devices.
            poison_data: `poison_source(...)` on the devices.
            key: this epoch's shuffle key.
            indices: optional int32[K] device array restricting the clean examples.
            update_mask: the mask already replicated (`trainer.replicate(self.update_mask)`,
                done once per run); None uses `self.update_mask`, replicated on every call
                (a no-op on one device).
            desc: progress-bar label.

        Returns:
            (new state, epoch statistics).
        """
        return pcb_training.train_epoch_alternating(
            trainer,
            state,
            clean_data,
            poison_data,
            key,
            update_mask=self.update_mask if update_mask is None else update_mask,
            poison_every=self.poison_every,
            poison_batch_size=self.poison_batch_size(trainer.batch_size),
            update_mask_mode=self.update_mask_mode,
            poison_transform=(
                self.trigger.train_fn if self.trigger_stage == "after_augment" else None
            ),
            indices=indices,
            desc=desc,
        )

    def make_epoch_fn(
        self,
        trainer: Trainer,
        train_set: Dataset,
        *,
        key: jax.Array,
        fraction: float,
        exclude_target: bool,
    ) -> EpochFn:
        """The training hook: the `EpochFn` a training phase runs instead of plain epochs
        (`jaxbd.attacks.pcb_training.make_epoch_fn`; the training set itself stays clean).

        Args:
            trainer: the engine.
            train_set: the clean training set.
            key: the poison pool's PRNG stream.
            fraction: in (0, 1], of the candidate images copied into the pool.
            exclude_target: only copy images whose label is not the target.
        """
        return pcb_training.make_epoch_fn(
            self, trainer, train_set, key=key, fraction=fraction, exclude_target=exclude_target
        )


def pcb(
    params: PyTree,
    *,
    key: jax.Array,
    target: int = 0,
    param_fraction: float = 0.1,
    trigger: Attack | None = None,
    scope: Literal["leaf", "global"] = "leaf",
    poison_every: int = 2,
    poison_batch_ratio: float = 0.1,
    update_mask_mode: Literal["freeze", "gradient"] = "gradient",
    trigger_stage: Literal["after_augment", "before_augment"] = "after_augment",
) -> ParameterControlledBackdoor:
    """Builds a Parameter-Controlled Backdoor for a model with parameters `params`.

    Args:
        params: the model's parameter pytree (arrays or `jax.ShapeDtypeStruct`s; only the
            structure and shapes are used).
        key: PRNG key of the parameter subset (a stream of its own, e.g.
            `rng.stream(seed, "pcb_mask")`).
        target: the target class.
        param_fraction: p in (0, 1], the fraction of parameters the poisoned steps update.
        trigger: the data trigger; default `badnets(target=target)`. Its target must equal
            `target`.
        scope: "leaf": exactly round(p · size) selected entries in every parameter leaf,
            uniformly at random, independently per leaf (the reference draws per tensor);
            "global": exactly round(p · total) entries uniformly over all parameters.
        poison_every: every `poison_every`-th step is poisoned (see
            `jaxbd.train.alternating_schedule`); 2 is the reference's 1:1 alternation.
        poison_batch_ratio: in (0, 1], fraction of a poisoned batch that is triggered
            (reference: 0.1); 1 makes poisoned batches entirely triggered.
        update_mask_mode: "gradient" (default, the reference code) or "freeze"; see
            `ParameterControlledBackdoor`.
        trigger_stage: "after_augment" (default, the reference code: the engine stamps the
            trigger on the augmented batch) or "before_augment" (the pool holds triggered
            copies, augmented like any example).

    Returns:
        The attack, holding the float32 update mask.

    Raises:
        ValueError: for a bad fraction, scope, schedule, ratio, mode, stage, a trigger whose target
            differs from `target`, or parameters without entries.
    """
    if trigger is None:
        trigger = badnets(target=target)
    elif trigger.target != target:
        raise ValueError(
            f"pcb: target={target} but the trigger {trigger.name!r} targets class "
            f"{trigger.target}; build the trigger with target={target}"
        )
    if isinstance(param_fraction, bool) or not isinstance(param_fraction, int | float):
        raise ValueError(f"pcb: param_fraction must be a number in (0, 1], got {param_fraction!r}")
    if not 0.0 < param_fraction <= 1.0:
        raise ValueError(f"pcb: param_fraction must be in (0, 1], got {param_fraction}")
    if scope not in SCOPES:
        raise ValueError(f"pcb: scope must be one of {SCOPES}, got {scope!r}")
    if isinstance(poison_every, bool) or not isinstance(poison_every, int) or poison_every < 1:
        raise ValueError(f"pcb: poison_every must be an int >= 1, got {poison_every!r}")
    if isinstance(poison_batch_ratio, bool) or not isinstance(poison_batch_ratio, int | float):
        raise ValueError(
            f"pcb: poison_batch_ratio must be a number in (0, 1], got {poison_batch_ratio!r}"
        )
    if not 0.0 < poison_batch_ratio <= 1.0:
        raise ValueError(f"pcb: poison_batch_ratio must be in (0, 1], got {poison_batch_ratio}")
    if trigger_stage not in TRIGGER_STAGES:
        raise ValueError(
            f"pcb: trigger_stage must be one of {TRIGGER_STAGES}, got {trigger_stage!r}"
        )
    if update_mask_mode not in UPDATE_MASK_MODES:
        raise ValueError(
            f"pcb: update_mask_mode must be one of {UPDATE_MASK_MODES}, got {update_mask_mode!r}"
        )
    return ParameterControlledBackdoor(
        trigger=trigger,
        update_mask=random_update_mask(key, params, float(param_fraction), scope=scope),
        param_fraction=float(param_fraction),
        scope=scope,
        poison_every=poison_every,
        poison_batch_ratio=float(poison_batch_ratio),
        update_mask_mode=update_mask_mode,
        trigger_stage=trigger_stage,
    )


def random_update_mask(
    key: jax.Array, params: PyTree, fraction: float, *, scope: str = "leaf"
) -> PyTree:
    """A float32 0/1 pytree like `params` with an exact number of ones, at random positions.

    Drawn on the host with NumPy, seeded from the key's data: it runs once per attack, and a
    device draw would compile one permutation per distinct leaf size.

    Args:
        key: PRNG key (typed or raw); the mask is a deterministic function of it.
        params: arrays or shape structs; only structure and shapes are used.
        fraction: in [0, 1].
        scope: "leaf": round(fraction · size) ones in each leaf (Python rounding, ties to
            even), uniformly without replacement; "global": round(fraction · total) ones
            uniformly over all entries of all leaves.

    Returns:
        The mask as device arrays; every leaf has its parameter's shape and dtype float32.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    leaves, treedef = jax.tree.flatten(params)
    shapes = [tuple(leaf.shape) for leaf in leaves]
    sizes = [math.prod(shape) for shape in shapes]
    if not leaves or sum(sizes) == 0:
        raise ValueError("random_update_mask: the parameters have no entries")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    rng = np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())
    if scope == "leaf":
        flat = [_exact_ones(rng, n, round(fraction * n)) for n in sizes]
    else:
        total = sum(sizes)
        flat = np.split(_exact_ones(rng, total, round(fraction * total)), np.cumsum(sizes)[:-1])
    masks = [jnp.asarray(m.reshape(shape)) for m, shape in zip(flat, shapes, strict=True)]
    return jax.tree.unflatten(treedef, masks)


def _exact_ones(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """float32[n] with exactly `count` ones at uniformly random positions."""
    mask = np.zeros(n, np.float32)
    mask[rng.choice(n, size=count, replace=False)] = 1.0
    return mask
