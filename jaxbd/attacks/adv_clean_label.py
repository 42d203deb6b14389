"""Adversarial clean-label backdoor (Turner, Tsipras, Madry 2019, "Label-consistent backdoor
attacks").

A clean-label attacker may only poison target-class images and must keep their labels; a
patch alone (`cl_badnets`) rarely works, since the images' content already explains their
label. Turner et al. first perturb each image by PGD within a small L∞ ball, *maximizing* a
surrogate model's loss on its true label, so that its content no longer looks like its class
to a network; the patch stamped afterwards becomes the easiest feature that explains the
label. At test time only the patch is stamped, no perturbation.

The surrogate is any differentiable, jittable `logits_fn(images float32[B, H, W, 3] in
[0, 1]) -> float[B, C]`; the experiment pipeline trains one on the clean training set before
poisoning, and `surrogate_logits_fn` wraps its variables. PGD runs in [0, 1] pixel units and
is rounded back to uint8 (ε = 8/255 moves a pixel by at most 8 levels). The method in
detail, and how jaxbd's surrogate differs from the paper's: docs/attacks.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from jaxbd.attacks.base import Attack
from jaxbd.attacks.patch import patch_trigger
from jaxbd.attacks.pixels import to_uint8, where_images
from jaxbd.attacks.validation import check_inputs, check_positive_int, check_target
from jaxbd.data.augment import CIFAR10_MEAN, CIFAR10_STD, normalize

LogitsFn = Callable[[jax.Array], jax.Array]
"""`images float32[B, H, W, 3] in [0, 1] -> logits float[B, C]`, differentiable and jittable."""


def adv_clean_label(
    logits_fn: LogitsFn,
    *,
    target: int = 0,
    epsilon: float = 8 / 255,
    steps: int = 4,
    step_size: float | None = None,
    random_start: bool = False,
    size: int | Sequence[int] = 7,
    color: Sequence[int] = (255, 0, 0),
    location: str | Sequence[int] = "bottom_right",
) -> Attack:
    """Builds the adversarial clean-label attack.

    Args:
        logits_fn: the surrogate, `images float32[B, H, W, 3] in [0, 1] -> float[B, C]`
            (e.g. from `surrogate_logits_fn`); it is closed over, not recorded in `params`.
        target: the target class: the only class whose training images are poisoned, and
            the label triggered test images should be classified as.
        epsilon: L∞ radius of the perturbation in [0, 1] pixel units, in (0, 1]; the
            default 8/255 is Turner et al.'s.
        steps: PGD iterations, a positive int.
        step_size: PGD step in [0, 1] pixel units, positive; None takes 2.5·ε/steps, the
            rule of Madry et al. 2018 that lets the iterate reach the boundary of the ball
            and move along it (5/255 for the defaults).
        random_start: start PGD from a uniform random point of the ε-ball (drawn from the
            key) instead of the image itself.
        size: patch side or `(height, width)`, as for `badnets`.
        color: RGB patch colour, three ints in [0, 255].
        location: a named corner, "center", "random" or an explicit `(row, col)`, as for
            `badnets`. The patch defaults are the usual BadNets trigger (7×7, red,
            bottom-right), as
            for `cl_badnets`, so the two clean-label attacks differ only by the PGD step.

    Returns:
        An `Attack` with `clean_label=True` on `uint8[..., H, W, 3]` images (any leading
        shape; under `vmap` a single image is given to `logits_fn` as a batch of one).

        - `train_fn(key, images, labels)`: for images whose label is `target`, PGD that
          maximizes the surrogate's cross-entropy for that label, rounding to uint8, then
          the patch; other images are returned unchanged (`poison_dataset` passes only
          target-class images; the label test keeps the transform clean-label on a mixed
          batch too). Labels are returned as given.
        - `test_fn(key, images, labels)`: the patch on every image, labels set to `target`.

        `params` records epsilon, steps, the resolved step_size, random_start and the patch.

    Raises:
        ValueError: for bad hyper-parameters (at build time); a patch that does not fit, or
            a `logits_fn` whose output is not `[B, C]` (at trace time).
    """
    if not callable(logits_fn):
        raise ValueError(
            f"adv_clean_label: logits_fn must be a callable images -> logits, got "
            f"{type(logits_fn).__name__}"
        )
    target = check_target("adv_clean_label", target)
    epsilon = _positive_float("epsilon", epsilon)
    if epsilon > 1.0:
        raise ValueError(f"adv_clean_label: epsilon must be in (0, 1] (pixel units), got {epsilon}")
    steps = check_positive_int("adv_clean_label", "steps", steps)
    step_size = (
        2.5 * epsilon / steps if step_size is None else _positive_float("step_size", step_size)
    )
    if not isinstance(random_start, bool | np.bool_):
        raise ValueError(f"adv_clean_label: random_start must be a bool, got {random_start!r}")
    random_start = bool(random_start)
    stamp, patch_params = patch_trigger(
        "adv_clean_label", size=size, color=color, location=location
    )

    def cross_entropy(x, labels):
        logits = logits_fn(x)
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"adv_clean_label: logits_fn must map images {x.shape} to logits "
                f"[{x.shape[0]}, C], got {logits.shape}"
            )
        # Summed, not averaged: each image's gradient is then exactly the gradient of its own
        # loss, independent of the batch size and of the other images in the batch.
        logits = logits.astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()

    grad_fn = jax.grad(cross_entropy)

    def pgd(key, images, labels):
        """L∞ PGD ascent on the cross-entropy; uint8[B, H, W, 3] -> uint8[B, H, W, 3]."""
        x0 = images.astype(jnp.float32) / 255.0
        low, high = jnp.maximum(x0 - epsilon, 0.0), jnp.minimum(x0 + epsilon, 1.0)
        x = x0
        if random_start:
            x = jnp.clip(
                x0 + jax.random.uniform(key, x0.shape, minval=-epsilon, maxval=epsilon), low, high
            )

        def step(_, x):
            x = x + step_size * jnp.sign(grad_fn(x, labels))
            return jnp.clip(x, low, high)

        x = jax.lax.fori_loop(0, steps, step, x)
        # x0·255 is an integer and the ball's faces are ε·255 levels away, so rounding keeps
        # every pixel within round(ε·255) levels of the original.
        return to_uint8(x * 255.0)

    def train_fn(key, images, labels):
        images, labels = check_inputs("adv_clean_label", images, labels)
        pgd_key, patch_key = jax.random.split(key)
        height, width = images.shape[-3:-1]
        # The surrogate takes a flat batch; under vmap a single image is a batch of one.
        flat = images.reshape((-1, height, width, 3))
        perturbed = pgd(pgd_key, flat, labels.reshape(-1)).reshape(images.shape)
        poisoned = stamp(patch_key, perturbed, labels)
        return where_images(labels == target, poisoned, images), labels

    def test_fn(key, images, labels):
        labels = jnp.asarray(labels)
        _, patch_key = jax.random.split(key)
        return stamp(patch_key, images, labels), jnp.full_like(labels, target)

    return Attack(
        name="adv_clean_label",
        target=target,
        clean_label=True,
        train_fn=train_fn,
        test_fn=test_fn,
        params=(
            ("epsilon", epsilon),
            ("steps", steps),
            ("step_size", step_size),
            ("random_start", random_start),
            *patch_params,
        ),
    )


def surrogate_logits_fn(
    model: nn.Module,
    variables: Mapping[str, Any],
    mean: Sequence[float] | ArrayLike = CIFAR10_MEAN,
    std: Sequence[float] | ArrayLike = CIFAR10_STD,
) -> LogitsFn:
    """Wraps a trained jaxbd model as the surrogate `logits_fn` of `adv_clean_label`.

    Args:
        model: a flax module returning `(logits, features)`, e.g. `jaxbd.models.resnet18()`.
        variables: its trained variables, `{"params": ..., "batch_stats": ...}` (from a
            `TrainState`: `{"params": state.params, "batch_stats": state.batch_stats}`).
            They are closed over, so they become constants of every function that jits the
            attack.
        mean: the per-channel normalization mean the model was trained with ([0, 1] units).
        std: the per-channel normalization standard deviation.

    Returns:
        `logits_fn(images float32[B, H, W, 3] in [0, 1]) -> float32[B, C]`: the model in
        inference mode (BatchNorm running statistics), differentiable in the images.
    """

    def logits_fn(images: jax.Array) -> jax.Array:
        # `normalize` expects [0, 255] pixel values (it divides by 255); it only casts, so
        # float input stays differentiable.
        x = normalize(images * 255.0, mean, std)
        logits, _ = model.apply(variables, x, train=False)
        return logits.astype(jnp.float32)

    return logits_fn


def _positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise ValueError(f"adv_clean_label: {name} must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"adv_clean_label: {name} must be a positive number, got {value!r}")
    return float(value)
