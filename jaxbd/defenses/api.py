"""Repairs and detectors on any model, in one call each.

    result = defenses.repair(classifier, defender, "finetune", key=key)
    result.classifier, result.curve, result.decisions
    detection = defenses.detect(classifier, defender, "strip", key=key, inputs={"x": images})

`classifier` is a `jaxbd.models.Classifier` (any flax module with its variables and
normalization); `defender` the defender's clean images (`own_defender` splits a user's own
set). jaxbd's engine is built inside (one per model and optimizer, reused). A method that
needs something the model lacks (a feature tap, conv→BatchNorm pairs) or data the defender
lacks is refused before any work, with a one-line error. Every decision reads the defender's
held-out images only; `evaluate` (e.g. the test set) is only recorded on the curve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxbd.defenses.base import Candidates, RepairContext, Variables
from jaxbd.defenses.defender_data import DefenderData
from jaxbd.defenses.detectors import DETECTORS, Detection, DetectorContext
from jaxbd.defenses.repairs import REPAIRS
from jaxbd.defenses.tuning import tune, validator
from jaxbd.models.classifier import Classifier
from jaxbd.train import Trainer, dense_mask, make_mesh

_ENGINES: dict[tuple, Trainer] = {}


@dataclasses.dataclass(frozen=True)
class RepairResult:
    """What `repair` returns.

    Attributes:
        classifier: the returned model (pruned weights zero, its `mask` set).
        curve: the trade-off curve, one row per evaluation ("step", "val_accuracy", the
            training figures, and `test_*` when `evaluate` was given).
        decisions: what the method decided (pruned channels, flagged labels, taps, ...).
        returned_step: the curve step of the returned model (the last within the budget).
        steps: steps trained.
        stopped_early: whether the Δ budget stopped tuning before its step budget.
        candidates: the alternatives a method chose among (ANP's thresholds, CLP's u grid),
            for oracle figures; None for most methods.
    """

    classifier: Classifier
    curve: list[dict[str, Any]]
    decisions: Mapping[str, Any]
    returned_step: int
    steps: int
    stopped_early: bool
    candidates: Candidates | None = None


def engine(
    classifier: Classifier,
    *,
    batch_size: int,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    crop_padding: int = 4,
    flip: bool = True,
    eval_batch_size: int = 256,
    num_devices: int | None = None,
) -> Trainer:
    """jaxbd's engine for a classifier's network and an optimizer: built once per distinct
    setting and reused, so repeated repairs compile nothing new."""
    mesh = make_mesh(num_devices)
    model = classifier.engine_model()
    key = (
        model,
        tuple(d.id for d in mesh.devices.flat),
        batch_size,
        eval_batch_size,
        momentum,
        weight_decay,
        classifier.mean,
        classifier.std,
        crop_padding,
        flip,
    )
    if key not in _ENGINES:
        _ENGINES[key] = Trainer(
            model,
            mesh,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            momentum=momentum,
            weight_decay=weight_decay,
            mean=classifier.mean,
            std=classifier.std,
            crop_padding=crop_padding,
            flip=flip,
            progress=False,
        )
    return _ENGINES[key]


def repair(
    classifier: Classifier,
    defender: DefenderData,
    method: str | Any,
    *,
    key: jax.Array,
    trigger: Callable | None = None,
    delta: float = 0.02,
    eval_every: int = 50,
    patience: int = 1,
    crop_padding: int = 4,
    flip: bool = True,
    eval_batch_size: int = 256,
    num_devices: int | None = None,
    evaluate: Callable[[Classifier], Mapping[str, float]] | None = None,
) -> RepairResult:
    """Repairs `classifier` with the defender's images through the shared tuning loop.

    Args:
        classifier: the suspect model.
        defender: the defender's clean images (tuning and held-out parts).
        method: a key of `REPAIRS` (its published defaults) or a repair instance
            (`FineTune(steps=200)`).
        key: the repair's PRNG key.
        trigger: the attack's `(key, images, labels) -> (images, labels)`, for a repair that
            assumes the defender knows it (`needs_trigger`, e.g. Grad-Prune).
        delta: the Δ budget on held-out accuracy (absolute).
        eval_every: steps between curve rows.
        patience: rows out of the budget in a row that stop tuning.
        crop_padding, flip: the tuning batches' augmentation (0 / False: none).
        eval_batch_size: images per inference call.
        num_devices: devices of the data-parallel mesh (None: all).
        evaluate: optional `evaluate(classifier) -> {name: value}` recorded on every curve
            row as `test_<name>` (reporting only: nothing decides on it).

    Raises:
        ValueError: (one line, before any work) an unknown method, a model lacking what the
            method reads, a defender without the images it needs, a missing trigger.
    """
    method = _repair_instance(method)
    name = getattr(method, "name", type(method).__name__)
    image_shape = _image_shape(defender)
    classifier.require(getattr(method, "model_needs", ()), image_shape, name)
    if getattr(method, "needs_trigger", False) and trigger is None:
        raise ValueError(f"{name} assumes the defender knows the trigger: pass trigger=...")
    data_free = getattr(method, "data_free", False)
    if defender.empty and not data_free:
        raise ValueError(
            f"{name} needs the defender's images (only a data-free repair runs without)"
        )
    if not data_free and len(defender.tune) < method.batch_size:
        raise ValueError(
            f"{name}: batch_size={method.batch_size} exceeds the defender's "
            f"{len(defender.tune)} tuning images"
        )
    method = _bound_to(method, classifier, image_shape)

    trainer = engine(
        classifier,
        batch_size=method.batch_size,
        momentum=method.momentum,
        weight_decay=method.weight_decay,
        crop_padding=crop_padding,
        flip=flip,
        eval_batch_size=eval_batch_size,
        num_devices=num_devices,
    )
    ctx = RepairContext(
        trainer=trainer,
        defender=defender,
        tune_data=None
        if defender.empty
        else trainer.put(defender.tune.images, defender.tune.labels),
        key=key,
        validate=None if defender.empty else validator(trainer, defender.val),
        num_classes=_num_classes(classifier, image_shape),
        trigger=trigger if getattr(method, "needs_trigger", False) else None,
    )
    undefended = _variables(classifier)
    plan = method.plan(ctx, undefended)
    evaluate_fn = None
    if evaluate is not None:

        def evaluate_fn(state) -> dict[str, float]:
            return dict(evaluate(_with(classifier, state)))

    result = tune(
        ctx,
        plan,
        eval_every=eval_every,
        delta=delta,
        patience=patience,
        evaluate_fn=evaluate_fn,
        base=undefended,
        desc=name,
    )
    return RepairResult(
        classifier=_with(classifier, result.variables),
        curve=result.rows,
        decisions=dict(plan.details),
        returned_step=result.returned_step,
        steps=result.steps,
        stopped_early=result.stopped_early,
        candidates=plan.candidates,
    )


def detect(
    classifier: Classifier,
    defender: DefenderData,
    method: str | Any,
    *,
    key: jax.Array,
    inputs: Mapping[str, np.ndarray] | np.ndarray | None = None,
    eval_batch_size: int = 256,
    num_devices: int | None = None,
) -> Detection:
    """Runs a registered detector on `classifier`.

    Args:
        classifier: the examined model.
        defender: the defender's clean images.
        method: a key of `DETECTORS` (its defaults) or an instance of a detector's settings
            (`StripSettings(overlays=50)`).
        key: the detector's PRNG key.
        inputs: what an input detector judges: named sets of uint8 images (or one array,
            named "inputs"); its verdicts are `Detection.flagged[name]`.
        eval_batch_size, num_devices: as for `repair`.

    Raises:
        ValueError: (one line, before any work) an unknown detector, an input detector
            without inputs, a model lacking what the detector reads, too few images.
    """
    name, detector, settings = _detector(method)
    if isinstance(inputs, np.ndarray | jax.Array):
        inputs = {"inputs": np.asarray(inputs)}
    inputs = dict(inputs or {})
    image_shape = _image_shape(defender)
    classifier.require(getattr(settings, "model_needs", ()), image_shape, name)
    if detector.kind == "input" and not inputs:
        raise ValueError(f"{name} judges inputs: pass inputs={{name: uint8 images}}")
    if detector.check is not None:
        detector.check(settings, defender)

    def make_trainer(batch_size: int, momentum: float, weight_decay: float) -> Trainer:
        return engine(
            classifier,
            batch_size=batch_size,
            momentum=momentum,
            weight_decay=weight_decay,
            eval_batch_size=eval_batch_size,
            num_devices=num_devices,
        )

    trainer = make_trainer(eval_batch_size, 0.9, 0.0)
    ctx = DetectorContext(
        model=_variables(classifier),
        logits_fn=classifier.logits_fn(),
        trainer=trainer,
        defender=defender,
        key=key,
        num_classes=_num_classes(classifier, image_shape),
        inputs=inputs,
        make_trainer=make_trainer,
    )
    return detector.detect(ctx, settings)


# -- helpers -------------------------------------------------------------------------------


def _repair_instance(method):
    if isinstance(method, str):
        if method not in REPAIRS:
            raise ValueError(f"unknown repair {method!r}; registered: {sorted(REPAIRS)}")
        return REPAIRS[method]()
    if not callable(getattr(method, "plan", None)):
        raise ValueError(
            f"a repair is a key of REPAIRS or a repair instance with plan(), got {method!r}"
        )
    return method


def _detector(method):
    if isinstance(method, str):
        if method not in DETECTORS:
            raise ValueError(f"unknown detector {method!r}; registered: {sorted(DETECTORS)}")
        return method, DETECTORS[method], DETECTORS[method].settings()
    for name, detector in DETECTORS.items():
        if isinstance(method, detector.settings):
            return name, detector, method
    raise ValueError(
        f"a detector is a key of DETECTORS or an instance of a detector's settings, got {method!r}"
    )


def _bound_to(method, classifier: Classifier, image_shape) -> Any:
    """The method with a model path it names by jaxbd's convention found on this model: a
    `head` field naming a module the parameters lack becomes None (found by structure:
    the dense kernel whose input width is the features')."""
    head = getattr(method, "head", None)
    if isinstance(head, str) and head not in classifier.params:
        return dataclasses.replace(method, head=None)
    return method


def _image_shape(defender: DefenderData) -> tuple[int, ...]:
    images = defender.val.images if defender.empty else defender.tune.images
    return tuple(images.shape[1:])


def _num_classes(classifier: Classifier, image_shape) -> int:
    model = classifier.engine_model()
    x = jax.ShapeDtypeStruct((1, *image_shape), np.float32)
    logits, _ = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), classifier.variables, x)
    return int(logits.shape[-1])


def _variables(classifier: Classifier) -> Variables:
    mask = classifier.mask if classifier.mask is not None else dense_mask(classifier.params)
    return Variables(classifier.params, classifier.batch_stats, mask)


def _with(classifier: Classifier, v) -> Classifier:
    """`classifier` with the parameters and statistics of `v` (Variables or a train state)."""
    return classifier.replace(
        params=v.params, batch_stats=v.batch_stats, mask=getattr(v, "mask", classifier.mask)
    )
