"""The setup stage: data → attack → poisoned training set → triggered test set.

Every pipeline that starts from a configuration begins here (the experiment pipeline, and a
defense or detection pipeline rebuilding a trained run's data). It is split at the moment a
run directory is claimed:

1. `check` (nothing written): loads nothing new, builds the attack with stand-ins for what
   its recipe needs (`jaxbd.attacks.recipe`), so bad hyper-parameters, an out-of-range
   target or a batch larger than the training set fail before the run directory is touched;
2. `build` (after claiming): trains the surrogate an attack may need (phase "surrogate",
   checkpointed, resumable), builds the attack, poisons the training set (or, for a
   training-time attack, keeps it clean and takes the attack's epoch function) and triggers
   the test set.

Each random choice uses its own stream of the seed: "poison", "test_trigger",
"surrogate/{init,augment,shuffle}", and `<attack>_mask` for an attack drawing from the
victim's parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxbd import attacks, rng
from jaxbd.data import DataSplits, load_dataset
from jaxbd.pipeline.stages.experiment_settings import ExperimentSettings
from jaxbd.runs import RunDir, train_phase
from jaxbd.select import num_to_select
from jaxbd.select import registry as select_registry
from jaxbd.settings import ConfigError
from jaxbd.train import EpochFn, Trainer


@dataclasses.dataclass(frozen=True)
class Setup:
    """What the setup stage produced.

    Attributes:
        splits: the clean train and test sets, with their source.
        attack: the built attack (an `Attack`, or a training-time attack).
        poisoned: the training set as the victim receives it (nothing poisoned for a
            training-time attack, which poisons during training instead).
        triggered: the triggered test set.
        epoch_fn: a training-time attack's epoch function, else None.
    """

    splits: DataSplits
    attack: Any
    poisoned: attacks.PoisonedDataset
    triggered: attacks.TriggeredTestSet
    epoch_fn: EpochFn | None


def load_data(settings: ExperimentSettings) -> DataSplits:
    """The clean train and test sets (`DataError` for a missing or corrupt copy)."""
    return load_dataset(settings.data)


def check(settings: ExperimentSettings, trainer: Trainer, splits: DataSplits) -> Any:
    """Everything that can be checked before the run directory is claimed.

    Returns:
        The attack when it can be built now (its recipe needs no surrogate), else None.

    Raises:
        ConfigError: naming the field, for a target outside the classes, hyper-parameters
            the attack rejects (when built, or only when its transforms are traced on images
            of the data's shape, e.g. a BadNets patch larger than the images), a clean-label
            attack asked for more poisons than the target class has, or a training batch
            larger than the (selected) set.
    """
    s, train_set = settings, splits.train
    if not 0 <= s.attack.target < train_set.num_classes:
        raise ConfigError(
            f"config.attack.target: must be in [0, {train_set.num_classes}), got {s.attack.target}"
        )
    needs = attacks.recipe(s.attack.name)
    try:
        attack = make_attack(s, trainer, train_set, logits_fn=stand_in_surrogate)
    except ValueError as e:
        raise ConfigError(f"config.attack.{s.attack.name}: {e}") from None
    _check_attack_runs(s, attack, train_set, surrogate=needs.surrogate)
    if trainer.steps_per_epoch(len(train_set)) == 0:
        raise ConfigError(
            f"config.train.batch_size={s.train.batch_size} exceeds the {len(train_set)} "
            "training examples"
        )
    if s.select.name is not None and select_registry.method(s.select.name).fraction:
        k = num_to_select(len(train_set), s.select.fraction)
        if trainer.steps_per_epoch(k) == 0:
            raise ConfigError(
                f"config.select.fraction: selects {k} of {len(train_set)} examples, fewer than "
                f"one batch of train.batch_size={s.train.batch_size}"
            )
    return None if needs.surrogate else attack


def build(
    settings: ExperimentSettings,
    trainer: Trainer,
    splits: DataSplits,
    rundir: RunDir,
    attack: Any = None,
) -> Setup:
    """Builds the attack (training its surrogate if needed), poisons and triggers.

    Args:
        settings: the experiment.
        trainer: the engine.
        splits: the clean data.
        rundir: the claimed run directory (the surrogate's phase checkpoints there).
        attack: the attack `check` returned, if any (not rebuilt).
    """
    s, train_set = settings, splits.train
    needs = attacks.recipe(s.attack.name)
    if attack is None:
        logits_fn = train_surrogate(s, trainer, train_set, rundir) if needs.surrogate else None
        attack = make_attack(s, trainer, train_set, logits_fn=logits_fn)
    epoch_fn = None
    if needs.trains:
        # A training-time attack: the training set stays clean; the attack's epochs poison.
        poisoned = attacks.PoisonedDataset(
            dataset=train_set,
            is_poison=np.zeros(len(train_set), bool),
            original_labels=train_set.labels.copy(),
            poison_indices=np.zeros(0, np.int32),
            target=attack.target,
        )
        epoch_fn = attack.make_epoch_fn(
            trainer,
            train_set,
            key=rng.stream(s.seed, "poison"),
            fraction=s.attack.fraction,
            exclude_target=s.attack.exclude_target,
        )
    else:
        poisoned = attacks.poison_dataset(
            rng.stream(s.seed, "poison"),
            train_set,
            attack,
            fraction=s.attack.fraction,
            exclude_target=s.attack.exclude_target,
        )
    triggered = attacks.triggered_test_set(rng.stream(s.seed, "test_trigger"), splits.test, attack)
    logging.info(
        "data: %s; %d training images, %d poisoned (%s → class %d)",
        splits.source,
        len(train_set),
        len(poisoned.poison_indices),
        attack.name,
        attack.target,
    )
    return Setup(
        splits=splits, attack=attack, poisoned=poisoned, triggered=triggered, epoch_fn=epoch_fn
    )


def train_surrogate(settings: ExperimentSettings, trainer: Trainer, train_set, rundir: RunDir):
    """A model trained on the clean training set, for an attack whose recipe needs one
    (phase "surrogate", `attack.surrogate_epochs` epochs with the train settings and its own
    streams), as `logits_fn(images float32[B, H, W, 3] in [0, 1]) -> logits`."""
    s = settings
    steps_per_epoch = trainer.steps_per_epoch(len(train_set))
    schedule = s.train.schedule(s.attack.surrogate_epochs, steps_per_epoch, warmup_epochs=0)
    state = trainer.init_state(
        rng.stream(s.seed, "surrogate/init"),
        train_set.image_shape,
        schedule,
        rng=rng.stream(s.seed, "surrogate/augment"),
    )
    state, _, _ = train_phase(
        "surrogate",
        trainer,
        state,
        trainer.put(train_set.images, train_set.labels),
        epochs=s.attack.surrogate_epochs,
        shuffle_key=rng.stream(s.seed, "surrogate/shuffle"),
        rundir=rundir,
        evaluate_fn=None,
        eval_every=0,
    )
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return attacks.surrogate_logits_fn(
        trainer.model, variables, tuple(s.data.mean), tuple(s.data.std)
    )


def make_attack(settings, trainer, train_set, *, logits_fn):
    """Builds the configured attack with what its recipe needs (the victim's parameter
    shapes and key; `logits_fn` for a surrogate attack)."""
    needs = attacks.recipe(settings.attack.name)
    params = key = None
    if needs.victim:
        # Only the shapes of the victim's parameters are needed: no initialization runs.
        dummy = jnp.zeros((1, *train_set.image_shape), jnp.float32)
        shapes = jax.eval_shape(
            lambda k: trainer.model.init(k, dummy, train=False), jax.random.key(0)
        )
        params = shapes["params"]
        key = rng.stream(settings.seed, f"{settings.attack.name}_mask")
    return attacks.make_attack(
        settings.attack,
        num_classes=train_set.num_classes,
        logits_fn=logits_fn if needs.surrogate else None,
        params=params,
        key=key,
    )


def _check_attack_runs(settings, attack, train_set, *, surrogate: bool) -> None:
    """Traces the attack's transforms on two images of the data's shape (abstractly: nothing
    is computed), and checks the poison count a clean-label attack asks for, so that what
    would fail at poisoning time fails before the run directory is claimed.

    The training transform of an attack that needs a surrogate is not traced: the surrogate
    is only a stand-in here.
    """
    name = settings.attack.name
    shape = (2, *train_set.image_shape)
    images = jax.ShapeDtypeStruct(shape, jnp.uint8)
    labels = jnp.asarray([attack.target, (attack.target + 1) % train_set.num_classes], jnp.int32)
    transforms = [("test_fn", attack.test_fn)]
    if not surrogate:
        transforms.insert(0, ("train_fn", attack.train_fn))
    for what, fn in transforms:
        try:
            out_images, _ = jax.eval_shape(fn, jax.random.key(0), images, labels)
        except (ValueError, TypeError, IndexError) as e:
            raise ConfigError(f"config.attack.{name}: {e}") from None
        if out_images.shape != shape or out_images.dtype != jnp.uint8:
            raise ConfigError(
                f"config.attack.{name}: its {what} returns images of dtype {out_images.dtype} "
                f"and shape {out_images.shape} for uint8 images of shape {shape}"
            )
    if getattr(attack, "clean_label", False) and not attacks.recipe(name).trains:
        if settings.attack.exclude_target:
            raise ConfigError(
                f"config.attack.exclude_target: must be False for {name}, a clean-label attack "
                "(it only poisons target-class images)"
            )
        n = len(train_set)
        num_poison = round(settings.attack.fraction * n)
        available = int(np.sum(train_set.labels == attack.target))
        if num_poison > available:
            raise ConfigError(
                f"config.attack.fraction: {name} is a clean-label attack; fraction="
                f"{settings.attack.fraction} of {n} examples asks for {num_poison} poisons, but "
                f"class {attack.target} has only {available} images (at most "
                f"fraction={available / n:.4g})"
            )


def stand_in_surrogate(images):
    raise AssertionError("stands in for the surrogate while checking settings; never called")
