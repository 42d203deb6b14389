"""Model-level backdoor detection: Calibrated Trigger Inversion, and Neural Cleanse's score.

**Calibrated Trigger Inversion** (Lukas & Kerschbaum 2023, "Pick your Poison:
Undetectability versus Robustness in Data Poisoning Attacks"). Plain trigger inversion finds
a universal perturbation for almost any class of almost any model; CTI calibrates it against
a *repaired* copy of the model, so what it finds must be a shortcut the repair removed:

1. repair a copy of the model with Pivotal Tuning (`jaxbd.defenses.pivotal_tuning`) on the
   defender's tuning images, through the shared tuning loop and its Δ budget;
2. for every class c, optimize one full-image additive perturbation δ_c (f32[H, W, 3], in
   [0, 1] pixel units; init U(0, 1)·0.01; Adam, lr 0.01, betas (0.5, 0.9), 50 steps) on the
   defender's tuning images *not* of class c:

       CE(f_poisoned(clip(x + δ_c)), c) + 0.5 · CE(f_repaired(clip(x + δ_c)), y)

   (plus an optional ℓ₂ penalty on δ_c, off by default): the perturbation must send images to
   c on the examined model while the repaired model keeps their true labels;
3. score_c = success of δ_c on the examined model − its success on the repaired one,
   measured on the defender's *held-out* images not of class c (Pick your Poison's code
   measured it on the test set; a defender has no test set). The model's score is
   max_c score_c: a backdoor's target gives a δ that works on the backdoored model only.

The calibration presumes a repair that removes the backdoor while the repaired copy stays as
easy to perturb as the examined model everywhere else. On small models Pivotal Tuning's SLOL
repair fails in one direction or the other, and a gentle weight-decay fine-tuning
(`slol_weight=0, param_weight=0, repair_weight_decay=0.5`, a small step) serves instead
(docs/detection.md); judge the paper's setting at the scale it was made for.

`invert_triggers` optimizes every class at once: one jitted program, `vmap` over c, the
steps in `lax.scan`, each step's batch shared by every class (class c's own images are
weighted out, not indexed away, so every shape is fixed). `cti_scores` scores every class in
one program too. Both take `logits_fn(images01 f32[B, H, W, 3]) -> f32[B, C]` callables that
normalize inside (`float_logits_fn` builds them for a flax model as a
`jax.tree_util.Partial`, so the variables are traced inputs and one compilation serves every
model of an architecture). `calibrated_trigger_inversion` runs the whole method with a
`RepairContext`.

Defaults: the inversion's are Pick your Poison's (above). The repair's budget is Pivotal
Tuning's own grid-searched CIFAR-10 setting at r = 1% (2000 steps, SGD lr 0.01, momentum 0.9,
λ_S = 0.05, λ_P = 20000, batch 128), stopped by the repo's Δ budget (2% validation accuracy,
3 rows of 50 steps); `repair_steps` shortens it (the model zoo uses a few hundred).

**Neural Cleanse's model score** (Wang et al. 2019): the anomaly index of the reversed
triggers' mask norms (`jaxbd.defenses.neural_cleanse`); a model's score is the largest index
among labels whose norm is below the median (0 if none), since only an unusually *small*
trigger betrays a backdoor. `NeuralCleanseDetectSettings` holds the reverse-engineering
budget of the detector.

This module is longer than most: it is the model-level detection of one paper (the
inversion program, the scoring program and the Neural Cleanse score it is compared with),
kept together so the method reads in one place.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbd.data.augment import normalize
from jaxbd.defenses.base import RepairContext, Variables
from jaxbd.defenses.neural_cleanse import TriggerSearch, anomaly_index
from jaxbd.defenses.pivotal_tuning import PivotalTuning
from jaxbd.defenses.tuning import TuneResult, tune
from jaxbd.settings import require, require_int

LogitsFn = Callable[[jax.Array], jax.Array]
"""`logits_fn(images01 float32[B, H, W, 3] in [0, 1]) -> float32[B, C]`, normalization
included; jittable (ideally a `jax.tree_util.Partial`, whose leaves jit traces)."""


# -- Calibrated Trigger Inversion --------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class CTISettings:
    """Calibrated Trigger Inversion's hyper-parameters (`config.detector.cti`).

    Attributes:
        steps: Adam steps of every class's δ (Pick your Poison: 50).
        lr: Adam's learning rate (0.01).
        b1: Adam's β₁ (0.5).
        b2: Adam's β₂ (0.9).
        init_scale: δ starts as U(0, 1)·init_scale (0.01).
        repaired_weight: weight of the repaired model's true-label cross-entropy (0.5).
        norm_weight: weight of an ℓ₂ penalty ‖δ‖₂ (0: none, the paper's default).
        batch_size: tuning images per inversion step, shared by every class (at most all).
        eval_batch_size: held-out images per scoring block (each block runs C·block images).
        repair_steps: Pivotal Tuning's step budget for the reference model.
        repair_lr: its SGD learning rate.
        repair_momentum: its SGD momentum.
        repair_weight_decay: its weight decay.
        repair_batch_size: its batch size (at most the defender's tuning images).
        slol_weight: λ_S.
        param_weight: λ_P.
        repair_eval_every: steps between the repair's validation rows.
        repair_delta: the repair's Δ budget on validation accuracy (absolute).
        repair_patience: rows out of the budget before the repair stops.
    """

    steps: int = 50
    lr: float = 0.01
    b1: float = 0.5
    b2: float = 0.9
    init_scale: float = 0.01
    repaired_weight: float = 0.5
    norm_weight: float = 0.0
    batch_size: int = 128
    eval_batch_size: int = 256
    repair_steps: int = 2000
    repair_lr: float = 0.01
    repair_momentum: float = 0.9
    repair_weight_decay: float = 0.0
    repair_batch_size: int = 128
    slol_weight: float = 0.05
    param_weight: float = 20000.0
    repair_eval_every: int = 50
    repair_delta: float = 0.02
    repair_patience: int = 3

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_batch_size", "repair_batch_size"):
            value = getattr(self, name)
            require_int(value, name, 1)
        for name in ("repair_steps",):
            value = getattr(self, name)
            require_int(value, name, 0)
        for name in ("repair_eval_every", "repair_patience"):
            value = getattr(self, name)
            require_int(value, name, 1)
        require(self.lr > 0, "lr", "must be > 0", self.lr)
        require(self.repair_lr > 0, "repair_lr", "must be > 0", self.repair_lr)
        for name in ("b1", "b2", "repair_momentum"):
            value = getattr(self, name)
            require(0 <= value < 1, name, "must be in [0, 1)", value)
        for name in (
            "init_scale",
            "repaired_weight",
            "norm_weight",
            "repair_weight_decay",
            "slol_weight",
            "param_weight",
            "repair_delta",
        ):
            value = getattr(self, name)
            require(value >= 0, name, "must be >= 0", value)


class CTIScores(NamedTuple):
    """The per-class result of scoring the inverted triggers.

    Attributes:
        poisoned_success: float32[C] fraction of the judged images (not of class c) that
            δ_c sends to c on the examined model.
        repaired_success: float32[C] the same on the repaired model.
        scores: float32[C] poisoned_success − repaired_success.
        judged: int32[C] the number of judged images per class.
    """

    poisoned_success: jax.Array
    repaired_success: jax.Array
    scores: jax.Array
    judged: jax.Array


def float_logits_fn(model, mean: Sequence[float], std: Sequence[float], variables) -> Any:
    """`images01 f32[B, H, W, 3] -> logits f32[B, C]` of a flax model in inference mode.

    Args:
        model: a flax module returning `logits` or `(logits, features, ...)`.
        mean: float[3] its normalization mean, in [0, 1] pixel units.
        std: float[3] its standard deviation.
        variables: `{"params": ..., "batch_stats": ...}`.

    Returns:
        A `jax.tree_util.Partial` whose leaves are the variables; the function is one object
        per (model, mean, std), so every model of an architecture reuses the compiled CTI
        programs.
    """
    apply = _float_apply(model, tuple(float(m) for m in mean), tuple(float(s) for s in std))
    return jax.tree_util.Partial(apply, variables["params"], variables.get("batch_stats", {}))


@functools.cache
def _float_apply(model, mean, std):
    def apply(params, batch_stats, images01):
        x = normalize(images01 * 255.0, mean, std)
        out = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
        if isinstance(out, tuple | list):
            out = out[0]
        return out.astype(jnp.float32)

    return apply


def invert_triggers(
    poisoned_fn: LogitsFn,
    repaired_fn: LogitsFn,
    images: jax.Array | np.ndarray,
    labels: jax.Array | np.ndarray,
    num_classes: int,
    *,
    key: jax.Array,
    steps: int = 50,
    lr: float = 0.01,
    b1: float = 0.5,
    b2: float = 0.9,
    init_scale: float = 0.01,
    repaired_weight: float = 0.5,
    norm_weight: float = 0.0,
    batch_size: int = 128,
) -> tuple[jax.Array, jax.Array]:
    """Optimizes one additive full-image δ per class, every class in one compiled program.

    δ_c starts as U(0, 1)·init_scale (from `fold_in(key, c)`) and follows Adam on the mean,
    over a batch's images not of class c, of `CE(poisoned(clip(x + δ)), c) +
    repaired_weight · CE(repaired(clip(x + δ)), y)`, plus `norm_weight · ‖δ‖₂`. Each step's
    batch (a random `batch_size` of the images, from `key` and the step) is shared by every
    class; images of class c weigh 0 in its loss. Compiled once per (logits functions'
    structure, image shape, C, settings).

    Args:
        poisoned_fn: the examined model's logits of [0, 1] images (see `LogitsFn`).
        repaired_fn: the repaired reference's.
        images: uint8[N, H, W, 3] the defender's clean tuning images.
        labels: int[N] their labels.
        num_classes: C.
        key: PRNG key (initial δs, batches).
        steps: Adam steps.
        lr: Adam's learning rate.
        b1: Adam's β₁.
        b2: Adam's β₂.
        init_scale: scale of the uniform initialization.
        repaired_weight: weight of the repaired model's cross-entropy.
        norm_weight: weight of ‖δ‖₂ (0: no penalty).
        batch_size: images per step (at most N).

    Returns:
        (deltas float32[C, H, W, 3], losses float32[C, steps]) — each class's loss before
        each step.

    Raises:
        ValueError: for no images, mismatched labels, or a setting out of range.
    """
    images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
        raise ValueError(f"images must be uint8[N >= 1, H, W, 3], got {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be int[{images.shape[0]}], got {labels.shape}")
    for name, value, ok in (
        ("num_classes", num_classes, num_classes >= 2),
        ("steps", steps, steps >= 1),
        ("lr", lr, lr > 0),
        ("batch_size", batch_size, batch_size >= 1),
        ("init_scale", init_scale, init_scale >= 0),
        ("repaired_weight", repaired_weight, repaired_weight >= 0),
        ("norm_weight", norm_weight, norm_weight >= 0),
    ):
        if not ok:
            raise ValueError(f"{name} out of range: {value!r}")
    return _invert_program(
        poisoned_fn,
        repaired_fn,
        images,
        labels,
        key,
        num_classes=int(num_classes),
        steps=int(steps),
        batch_size=int(min(batch_size, images.shape[0])),
        lr=float(lr),
        b1=float(b1),
        b2=float(b2),
        init_scale=float(init_scale),
        repaired_weight=float(repaired_weight),
        norm_weight=float(norm_weight),
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "num_classes",
        "steps",
        "batch_size",
        "lr",
        "b1",
        "b2",
        "init_scale",
        "repaired_weight",
        "norm_weight",
    ),
)
def _invert_program(
    poisoned_fn,
    repaired_fn,
    images,
    labels,
    key,
    *,
    num_classes,
    steps,
    batch_size,
    lr,
    b1,
    b2,
    init_scale,
    repaired_weight,
    norm_weight,
):
    n = images.shape[0]
    tx = optax.adam(lr, b1=b1, b2=b2)
    init_key, data_key = jax.random.split(key)

    def one_class(c):
        delta = init_scale * jax.random.uniform(jax.random.fold_in(init_key, c), images.shape[1:])

        def objective(delta, x, y):
            xd = jnp.clip(x + delta, 0.0, 1.0)
            ce_poisoned = optax.softmax_cross_entropy_with_integer_labels(
                poisoned_fn(xd), jnp.full_like(y, c)
            )
            ce_repaired = optax.softmax_cross_entropy_with_integer_labels(repaired_fn(xd), y)
            # Class c's own images say nothing about a trigger *to* c: weighted out, so the
            # batch keeps its shape under vmap.
            w = (y != c).astype(jnp.float32)
            per_image = ce_poisoned + repaired_weight * ce_repaired
            loss = jnp.sum(w * per_image) / jnp.maximum(jnp.sum(w), 1.0)
            if norm_weight > 0:  # static; sqrt's gradient at 0 would be NaN otherwise
                loss = loss + norm_weight * jnp.sqrt(jnp.sum(delta * delta) + 1e-12)
            return loss

        def step(carry, t):
            delta, opt_state = carry
            # The batch depends on the step only, so the gather stays unbatched under vmap.
            idx = jax.random.permutation(jax.random.fold_in(data_key, t), n)[:batch_size]
            x = images[idx].astype(jnp.float32) / 255.0
            loss, grad = jax.value_and_grad(objective)(delta, x, labels[idx])
            updates, opt_state = tx.update(grad, opt_state, delta)
            return (optax.apply_updates(delta, updates), opt_state), loss

        (delta, _), losses = jax.lax.scan(step, (delta, tx.init(delta)), jnp.arange(steps))
        return delta, losses

    # Both models are frozen: no gradient reaches their variables.
    poisoned_fn = jax.lax.stop_gradient(poisoned_fn)
    repaired_fn = jax.lax.stop_gradient(repaired_fn)
    return jax.vmap(one_class)(jnp.arange(num_classes))


def cti_scores(
    poisoned_fn: LogitsFn,
    repaired_fn: LogitsFn,
    deltas: jax.Array,
    images: jax.Array | np.ndarray,
    labels: jax.Array | np.ndarray,
    *,
    batch_size: int = 256,
) -> CTIScores:
    """Each class's calibrated score: δ_c's success on the examined model minus on the
    repaired one, over the images not of class c (one compiled program, every class).

    Args:
        poisoned_fn: the examined model's logits of [0, 1] images.
        repaired_fn: the repaired reference's.
        deltas: float32[C, H, W, 3] from `invert_triggers`.
        images: uint8[M, H, W, 3] the defender's held-out clean images.
        labels: int[M] their labels.
        batch_size: images per block (the last block padded and weighted out).

    Returns:
        The per-class successes, scores and judged counts (a class with no judged image
        scores 0).
    """
    images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be uint8[M >= 1, H, W, 3], got {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be int[{images.shape[0]}], got {labels.shape}")
    block = int(min(batch_size, images.shape[0]))
    hits, judged = _score_program(poisoned_fn, repaired_fn, deltas, images, labels, block=block)
    rate = hits / jnp.maximum(judged, 1)[None].astype(jnp.float32)
    return CTIScores(
        poisoned_success=rate[0],
        repaired_success=rate[1],
        scores=rate[0] - rate[1],
        judged=judged,
    )


@functools.partial(jax.jit, static_argnames=("block",))
def _score_program(poisoned_fn, repaired_fn, deltas, images, labels, *, block):
    """(hits float32[2, C] on the poisoned and repaired models, judged int32[C])."""
    m = images.shape[0]
    num_classes = deltas.shape[0]
    blocks = -(-m // block)
    index = jnp.arange(blocks * block)
    valid = (index < m).reshape(blocks, block)
    index = jnp.minimum(index, m - 1).reshape(blocks, block)

    def count(totals, batch):
        idx, ok = batch
        x, y = images[idx].astype(jnp.float32) / 255.0, labels[idx]

        def per_class(c, delta):
            xd = jnp.clip(x + delta, 0.0, 1.0)
            judged = ok & (y != c)
            hit_p = judged & (jnp.argmax(poisoned_fn(xd), -1) == c)
            hit_r = judged & (jnp.argmax(repaired_fn(xd), -1) == c)
            return jnp.stack([hit_p.sum(), hit_r.sum()]).astype(jnp.float32), judged.sum()

        hits, judged = jax.vmap(per_class)(jnp.arange(num_classes), deltas)
        return (totals[0] + hits.T, totals[1] + judged.astype(jnp.int32)), None

    zeros = (jnp.zeros((2, num_classes), jnp.float32), jnp.zeros(num_classes, jnp.int32))
    (hits, judged), _ = jax.lax.scan(count, zeros, (index, valid))
    return hits, judged


@dataclasses.dataclass(frozen=True)
class CTIResult:
    """What `calibrated_trigger_inversion` found.

    Attributes:
        score: the model's score, max_c score_c.
        target: the argmax class (the suspected backdoor target).
        scores: the per-class successes and scores on the held-out images.
        deltas: float32[C, H, W, 3] the inverted perturbations.
        losses: float32[C, steps] the inversion's loss per class and step.
        repaired: the repaired reference model.
        repair: the repair's tuning result (its curve, the returned step).
    """

    score: float
    target: int
    scores: CTIScores
    deltas: np.ndarray
    losses: np.ndarray
    repaired: Variables
    repair: TuneResult


def calibrated_trigger_inversion(
    ctx: RepairContext, variables: Variables, settings: CTISettings | None = None
) -> CTIResult:
    """Calibrated Trigger Inversion (Lukas & Kerschbaum 2023) of one model.

    Args:
        ctx: the repair context: its trainer must carry the repair's optimizer
            (`repair_momentum`, `repair_weight_decay`) and batch size; its defender's tuning
            images drive the repair and the inversion, its held-out images (`validate`, the
            scores) are the only ones judged.
        variables: the examined model (its mask applied).
        settings: the hyper-parameters (default `CTISettings()`).

    Returns:
        The model's score, the per-class scores, the perturbations and the repaired model.
    """
    s = settings or CTISettings()
    trainer = ctx.trainer
    repair = PivotalTuning(
        steps=s.repair_steps,
        lr=s.repair_lr,
        momentum=s.repair_momentum,
        weight_decay=s.repair_weight_decay,
        batch_size=s.repair_batch_size,
        slol_weight=s.slol_weight,
        param_weight=s.param_weight,
    )
    result = tune(
        ctx,
        repair.plan(ctx, variables),
        eval_every=s.repair_eval_every,
        delta=s.repair_delta,
        patience=s.repair_patience,
        desc="cti/pivotal_tuning",
    )

    def logits(v: Variables):
        params = jax.tree.map(jnp.multiply, v.params, v.mask)
        return float_logits_fn(
            trainer.model,
            trainer.mean,
            trainer.std,
            {"params": params, "batch_stats": v.batch_stats},
        )

    poisoned_fn, repaired_fn = logits(variables), logits(result.variables)
    d = ctx.defender
    deltas, losses = invert_triggers(
        poisoned_fn,
        repaired_fn,
        d.tune.images,
        d.tune.labels,
        ctx.num_classes,
        key=jax.random.fold_in(ctx.key, zlib.crc32(b"cti/invert")),
        steps=s.steps,
        lr=s.lr,
        b1=s.b1,
        b2=s.b2,
        init_scale=s.init_scale,
        repaired_weight=s.repaired_weight,
        norm_weight=s.norm_weight,
        batch_size=s.batch_size,
    )
    scores = jax.device_get(
        cti_scores(
            poisoned_fn,
            repaired_fn,
            deltas,
            d.val.images,
            d.val.labels,
            batch_size=s.eval_batch_size,
        )
    )
    per_class = np.asarray(scores.scores)
    return CTIResult(
        score=float(per_class.max()),
        target=int(per_class.argmax()),
        scores=scores,
        deltas=np.asarray(deltas),
        losses=np.asarray(losses),
        repaired=result.variables,
        repair=result,
    )


# -- Neural Cleanse as a model-level detector --------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class NeuralCleanseDetectSettings(TriggerSearch):
    """Neural Cleanse detection's settings (`config.detector.neural_cleanse`): the trigger
    search's (`jaxbd.defenses.neural_cleanse.TriggerSearch`: epochs, the cost schedule, the
    early stop, the flagging threshold) and its batch and learning rate.

    Attributes:
        batch_size: reverse-engineering images per step.
        lr: Adam's learning rate for the masks and patterns.
    """

    batch_size: int = 128
    lr: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        require_int(self.batch_size, "batch_size", 1)
        require(self.lr > 0, "lr", "must be > 0", self.lr)


def neural_cleanse_score(norms: jax.Array | np.ndarray) -> float:
    """A model's Neural Cleanse score from its labels' reversed-trigger norms.

    Args:
        norms: float[C] the ℓ₁ mask norms.

    Returns:
        The largest anomaly index among labels whose norm is below the median; 0 if none.
    """
    norms = np.asarray(norms, np.float32)
    index = np.asarray(anomaly_index(norms))
    below = norms < np.median(norms)
    return float(index[below].max()) if below.any() else 0.0
