"""Neural Attention Distillation: distil a fine-tuned teacher's attention into the model.

Li et al. 2021, "Neural Attention Distillation: Erasing Backdoor Triggers from Deep Neural
Networks" (ICLR). Two phases on the defender's tuning images:

1. **Teacher**: a copy of the backdoored model fine-tuned with cross-entropy for
   `teacher_steps` steps, directly on the engine (it is never returned, so it gets no curve
   and no Δ budget).
2. **Student**: the backdoored model itself, trained with
   `CE + λ_at · Σ_taps MSE(A(student tap), A(teacher tap))`, the teacher frozen in inference
   mode and passed to every step as `extra`.

The attention map of an activation a ∈ R^{H×W×C} is `normalize_L2(flatten(Σ_c |a_c|^p))`
(`attention_map`). Taps are the model's sown 4-D stage outputs larger than 1×1
(`attention_taps`), chosen from the shapes at plan time and reported in `details["taps"]`.
Why 1×1 maps are left out and the defaults' provenance: docs/defenses.md.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax

from jaxbd.defenses.base import RepairContext, TuningPlan, Variables, copy_tree
from jaxbd.defenses.finetune import check_optimizer, engine_classifier
from jaxbd.models.classifier import Classifier
from jaxbd.settings import require, require_int
from jaxbd.train import PLAIN, CosineSchedule, LossOutput, StepVariant

_EPS = 1e-6
"""Floor of an attention map's L2 norm (an all-zero map, e.g. dead ReLUs, stays zero)."""


def attention_map(activations: jax.Array, p: float = 2.0) -> jax.Array:
    """The spatial attention map of a stage's output (Zagoruyko & Komodakis's, as NAD uses it).

    Args:
        activations: f32[B, H, W, C] (any float dtype; computed in float32).
        p: the exponent of the channel-wise sum.

    Returns:
        f32[B, H·W]: `Σ_c |a|^p` flattened over space (row-major), divided by its L2 norm per
        example (floored at `_EPS`, so an all-zero map gives zeros, not NaN).
    """
    a = jnp.sum(jnp.abs(activations.astype(jnp.float32)) ** p, axis=-1)
    a = a.reshape(a.shape[0], -1)
    # maximum() before sqrt keeps the gradient finite for an all-zero map.
    norm = jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=-1, keepdims=True), _EPS**2))
    return a / norm


def attention_taps(classifier: Classifier, image_shape: Sequence[int]) -> tuple[str, ...]:
    """The taps usable by NAD: 4-D, spatial size larger than 1×1.

    Shapes only (`jax.eval_shape`): nothing is computed or compiled.

    Args:
        classifier: the model; its taps are its sown stage outputs (jaxbd's models), its
            declared `taps`, or the last conv/BatchNorm output at each resolution (the rule
            of `Classifier.intermediates`).
        image_shape: (H, W, 3) of one image.

    Returns:
        The tap names, in the model's order.

    Raises:
        ValueError: if the model has no usable tap.
    """
    model = classifier.engine_model()
    x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]),
        classifier.variables,
        x,
    )
    sown = state.get("intermediates", {})
    taps = tuple(
        name
        for name, value in sown.items()
        if value[0].ndim == 4 and value[0].shape[1] * value[0].shape[2] > 1
    )
    if not taps:
        shapes = {name: value[0].shape for name, value in sown.items()}
        raise ValueError(
            "NAD needs a stage output larger than 1×1 sown into 'intermediates'; the model "
            f"sows {shapes or 'nothing'} for images of shape {tuple(image_shape)}"
        )
    return taps


def attention_loss(student: dict, teacher: dict, taps: Sequence[str], p: float, weights):
    """f32[], Σ_taps of the weighted mean over examples of the mean squared difference of
    attention maps (PyTorch's `F.mse_loss` per tap when every weight is 1).

    Args:
        student: the student's "intermediates" (name → 1-tuple of f32[B, H, W, C]).
        teacher: the teacher's, same structure.
        taps: the names to compare.
        p: the attention exponent.
        weights: f32[B] per-example loss weights.
    """
    total = jnp.zeros((), jnp.float32)
    for tap in taps:
        diff = attention_map(student[tap][0], p) - attention_map(teacher[tap][0], p)
        total = total + jnp.mean(weights * jnp.mean(jnp.square(diff), axis=-1))
    return total


@functools.cache
def _variant(attention_weight: float, p: float, taps: tuple[str, ...]) -> StepVariant:
    """The student's step variant: one object per value, so every tuning chunk (and every
    equal repair on the same taps) reuses one compiled step."""

    def loss_fn(model, params, batch_stats, x, labels, weights, extra):
        teacher = jax.lax.stop_gradient(extra)  # frozen: data, not a parameter
        (logits, _), updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            train=True,
            mutable=["batch_stats", "intermediates"],
        )
        _, sown = model.apply(teacher, x, train=False, mutable=["intermediates"])
        ce = jnp.mean(weights * optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        attention = attention_loss(
            updates["intermediates"], sown["intermediates"], taps, p, weights
        )
        loss = ce + attention_weight * attention
        terms = {"ce": ce, "attention": attention}
        return LossOutput(loss, logits, updates.get("batch_stats", batch_stats), terms)

    return StepVariant(loss_fn=loss_fn)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NAD:
    """Neural Attention Distillation (Li et al. 2021).

    Attributes:
        steps: the student's SGD steps.
        lr: the student's learning rate (constant unless `cosine`).
        momentum: SGD momentum (teacher and student).
        weight_decay: L2 coefficient added to the gradient (PyTorch's convention; teacher and
            student).
        batch_size: images per step.
        teacher_steps: the teacher's fine-tuning steps (0: the teacher is the model itself).
        teacher_lr: the teacher's learning rate; None: `lr`.
        attention_weight: λ_at, the weight of the attention term (every tap alike).
        p: the exponent of the attention map.
        cosine: decay the learning rates to 0 over each phase's steps (BackdoorBench's
            schedule).

    Raises:
        InvalidSettingError: for a value out of range.
    """

    steps: int = 2000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    teacher_steps: int = 1000
    teacher_lr: float | None = None
    attention_weight: float = 1000.0
    p: float = 2.0
    cosine: bool = False
    name: ClassVar[str] = "nad"
    # The attention maps of the stage outputs the model sows into "intermediates".
    model_needs: ClassVar[tuple[str, ...]] = ("taps",)

    def __post_init__(self):
        check_optimizer(self)
        require_int(self.teacher_steps, "teacher_steps", 0)
        require(
            self.teacher_lr is None or 0 < self.teacher_lr < float("inf"),
            "teacher_lr",
            "must be None (the repair's lr) or a finite number > 0",
            self.teacher_lr,
        )
        require(
            self.attention_weight >= 0, "attention_weight", "must be >= 0", self.attention_weight
        )
        require(self.p > 0, "p", "must be > 0", self.p)

    def variant(self, taps: Sequence[str]) -> StepVariant:
        """The student's train-step variant (the same object on every call with these taps)."""
        return _variant(float(self.attention_weight), float(self.p), tuple(taps))

    def teacher(self, ctx: RepairContext, variables: Variables) -> Variables:
        """Fine-tunes a copy of the model with cross-entropy for `teacher_steps` steps."""
        if self.teacher_steps == 0:
            return Variables(
                copy_tree(variables.params), copy_tree(variables.batch_stats), variables.mask
            )
        lr = self.lr if self.teacher_lr is None else self.teacher_lr
        schedule = CosineSchedule.create(lr, self.teacher_steps, end=0.0 if self.cosine else lr)
        # Keys of the teacher's own (fold_in 3, split): `tune` uses fold_in 1 and 2 of
        # ctx.key for the student's stream and augmentation.
        stream, rng = jax.random.split(jax.random.fold_in(ctx.key, 3))
        # Every leaf copied, the mask too: the state is donated by the steps, and
        # `Trainer.new_state` keeps the mask's buffer as it is given.
        state = ctx.trainer.new_state(
            copy_tree(variables.params),
            copy_tree(variables.batch_stats),
            schedule,
            rng=rng,
            mask=copy_tree(variables.mask),
        )
        state, _ = ctx.trainer.train_steps(
            state,
            ctx.tune_data,
            stream,
            start=0,
            steps=self.teacher_steps,
            variant=PLAIN,
            desc=f"nad teacher {self.teacher_steps} steps",
        )
        return Variables(state.params, state.batch_stats, state.mask)

    def plan(self, ctx: RepairContext, variables: Variables) -> TuningPlan:
        """Train the teacher, pick the taps, and distil into the backdoored model."""
        classifier = engine_classifier(ctx.trainer, variables.params, variables.batch_stats)
        taps = attention_taps(classifier, ctx.tune_data.images.shape[1:])
        teacher = self.teacher(ctx, variables)
        return TuningPlan(
            variables=variables,
            data=ctx.tune_data,
            steps=self.steps,
            lr=self.lr,
            cosine=self.cosine,
            variant=self.variant(taps),
            extra={"params": teacher.params, "batch_stats": teacher.batch_stats},
            details={
                "taps": list(taps),
                "teacher_steps": self.teacher_steps,
                "teacher_val_accuracy": float(ctx.validate(teacher.params, teacher.batch_stats)),
            },
        )
