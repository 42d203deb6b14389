"""Evaluation metrics: clean accuracy, ASR, robust accuracy, poison retention, DER, RIR,
ROC AUC.

The exact definitions, with the reasons for them, are in docs/metrics.md.

The per-model metrics are pure functions over arrays: they take NumPy or JAX arrays, compute
with `jax.numpy` (so they also run inside `jit`), and return a float32 scalar array (call
`float(...)` for a Python number). A metric whose denominator is empty — ASR with no eligible
image, retention with no poison, AUC with one class only — is NaN rather than 0 or 1, so an
undefined value can never pass for a real one in a table. Shapes are checked at trace time
(ValueError on a mismatch).

`backdoor_metrics` evaluates any model (a `predict_fn` from images to logits) on a clean
test set and its triggered copy: the four test metrics the pipeline reports.

`robust_improvement_rate`, `aggregate` and `format_mean_std` work on the host, for reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


class LabelledImages(Protocol):
    """A clean test set, e.g. a `jaxbd.data.Dataset`."""

    images: np.ndarray  # uint8[M, H, W, 3]
    labels: np.ndarray  # int[M]


class TriggeredImages(Protocol):
    """A triggered test set, e.g. a `jaxbd.attacks.TriggeredTestSet`."""

    images: np.ndarray  # uint8[M, H, W, 3], the trigger applied
    labels: np.ndarray  # int[M], the attacker's labels
    true_labels: np.ndarray  # int[M], the clean labels


def clean_accuracy(predictions: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Top-1 accuracy (CDA when evaluated on the clean test set).

    Args:
        predictions: int[M] predicted classes.
        labels: int[M] true classes.

    Returns:
        float32 scalar: fraction of `predictions == labels`; NaN when M = 0.
    """
    predictions, labels = _check_same_shape(predictions=predictions, labels=labels)
    return _fraction(predictions == labels, jnp.ones(predictions.shape, bool))


def attack_success_rate(
    predictions: ArrayLike, target_labels: ArrayLike, true_labels: ArrayLike
) -> jax.Array:
    """ASR: among triggered images whose true label differs from the target, the fraction
    predicted as the target.

    Images whose true label already is the target are left out: a model that ignores the
    trigger still "succeeds" on them, which put a floor of about 1/C under the ASR of earlier
    studies (docs/metrics.md, "Attack success rate"). The target is per example, so
    all-to-all attacks (target (y + 1) mod C) use the same function. See `asr_all_images`
    for the variant that counts every image.

    Args:
        predictions: int[M] predictions on the triggered images.
        target_labels: int[M] attacker's labels (`TriggeredTestSet.labels`), or a scalar
            target class broadcast to every image.
        true_labels: int[M] clean labels.

    Returns:
        float32 scalar in [0, 1]; NaN when no image is eligible.
    """
    predictions, target_labels, true_labels = _check_attack_args(
        predictions, target_labels, true_labels
    )
    return _fraction(predictions == target_labels, target_labels != true_labels)


def asr_all_images(predictions: ArrayLike, target_labels: ArrayLike) -> jax.Array:
    """ASR over all triggered images, target-class images included.

    Only for comparison with studies that computed ASR this way (docs/metrics.md, "ASR over
    all images");
    it is at least the target class's share of correct predictions even for a clean model.
    jaxbd's headline ASR is `attack_success_rate`.

    Args:
        predictions: int[M] predictions on the triggered images.
        target_labels: int[M] attacker's labels, or a scalar target class.

    Returns:
        float32 scalar: fraction of `predictions == target_labels`; NaN when M = 0.
    """
    predictions = jnp.asarray(predictions)
    target_labels = _broadcast_target(target_labels, predictions)
    predictions, target_labels = _check_same_shape(
        predictions=predictions, target_labels=target_labels
    )
    return _fraction(predictions == target_labels, jnp.ones(predictions.shape, bool))


def robust_accuracy(
    predictions: ArrayLike, target_labels: ArrayLike, true_labels: ArrayLike
) -> jax.Array:
    """RA: on the images ASR counts, the fraction predicted as their true label.

    ASR + RA ≤ 1 on the same images; the rest are predicted as some third class.

    Args:
        predictions: int[M] predictions on the triggered images.
        target_labels: int[M] attacker's labels, or a scalar target class.
        true_labels: int[M] clean labels.

    Returns:
        float32 scalar in [0, 1]; NaN when no image is eligible.
    """
    predictions, target_labels, true_labels = _check_attack_args(
        predictions, target_labels, true_labels
    )
    return _fraction(predictions == true_labels, target_labels != true_labels)


def poison_retention(is_poison: ArrayLike, selected_indices: ArrayLike) -> jax.Array:
    """Fraction of the training set's poisons that a selection kept.

    Args:
        is_poison: bool[N] poison flags by canonical index.
        selected_indices: int[k] selected canonical indices in [0, N); a repeated index
            counts once.

    Returns:
        float32 scalar: poisons among the selected / poisons in the training set, in [0, 1];
        NaN when the training set has no poison (retention is undefined, not 0 or 1).

    Raises:
        ValueError: if `is_poison` is not 1-D, or (for concrete inputs; under `jit` the
            range cannot be checked and out-of-range indices are ignored) an index lies
            outside [0, N).
    """
    is_poison = jnp.asarray(is_poison, bool)
    selected_indices = jnp.asarray(selected_indices)
    if is_poison.ndim != 1 or selected_indices.ndim != 1:
        raise ValueError(
            f"is_poison must be bool[N] and selected_indices int[k], got shapes "
            f"{is_poison.shape} and {selected_indices.shape}"
        )
    if not jnp.issubdtype(selected_indices.dtype, jnp.integer):
        if selected_indices.size:
            raise ValueError(f"selected_indices must be integers, got {selected_indices.dtype}")
        selected_indices = selected_indices.astype(jnp.int32)  # e.g. np.array([]) is float
    n = is_poison.shape[0]
    if not isinstance(selected_indices, jax.core.Tracer) and selected_indices.size:
        low, high = int(selected_indices.min()), int(selected_indices.max())
        if low < 0 or high >= n:
            raise ValueError(f"selected_indices must lie in [0, {n}), found [{low}, {high}]")
    # A membership mask rather than is_poison[selected].sum(): repeats count once, so
    # retention is monotone in the selected set and never exceeds 1.
    selected = jnp.zeros((n,), bool).at[selected_indices].set(True, mode="drop")
    return _fraction(selected, is_poison)


def defense_effectiveness_rating(
    cda_before: ArrayLike, cda_after: ArrayLike, asr_before: ArrayLike, asr_after: ArrayLike
) -> jax.Array:
    """DER (Wu et al. 2022, "BackdoorBench: a comprehensive benchmark of backdoor learning"):
    [max(0, ΔASR) − max(0, ΔCDA) + 1] / 2.

    Δ are drops from the undefended model (before − after). All four are fractions in
    [0, 1] (not percentages); then DER lies in [0, 1], 0.5 means no change (or equal
    gains and costs), 1 means the ASR fell from 1 to 0 at no clean-accuracy cost. Gains in
    clean accuracy and rises in ASR are clipped to 0, as in BackdoorBench. Arrays broadcast
    (e.g. one value per seed).

    Returns:
        float32 array of the broadcast shape (a scalar for scalar inputs).

    Raises:
        ValueError: for a concrete input outside [0, 1] (e.g. percentages, which would
            otherwise give a meaningless rating such as 42.0); NaN (an undefined ASR)
            passes and propagates. Under `jit` the range cannot be checked.
    """
    named = {
        "cda_before": cda_before,
        "cda_after": cda_after,
        "asr_before": asr_before,
        "asr_after": asr_after,
    }
    for name, value in named.items():
        if isinstance(value, jax.core.Tracer):
            continue
        # On the host, in float64: the check must not itself round 1.00000001 into range.
        host = np.asarray(jax.device_get(value), np.float64)
        outside = ~np.isnan(host) & ((host < 0.0) | (host > 1.0))
        if outside.any():
            raise ValueError(
                f"{name} must be a fraction in [0, 1] (not a percentage), got "
                f"{host[outside].ravel()[0]:g}"
            )
    cda_before, cda_after, asr_before, asr_after = (
        jnp.asarray(v, jnp.float32) for v in (cda_before, cda_after, asr_before, asr_after)
    )
    asr_drop = jnp.maximum(0.0, asr_before - asr_after)
    cda_drop = jnp.maximum(0.0, cda_before - cda_after)
    return (asr_drop - cda_drop + 1.0) / 2.0


def robust_improvement_rate(
    clean_before: float, clean_after: float, robust_before: float, robust_after: float
) -> float:
    """RIR (BackdoorBench): [max(0, RA_after − RA_before) − max(0, clean drop) + 1] / 2.

    The robust-accuracy counterpart of `defense_effectiveness_rating`: gains in robust
    accuracy count, rises in clean accuracy are clipped to 0. Host-side, on Python floats
    (fractions in [0, 1]), as the defense reports compute it.

    Returns:
        A Python float in [0, 1]; 0.5 means no change.
    """
    gain = max(0.0, robust_after - robust_before)
    drop = max(0.0, clean_before - clean_after)
    return (gain - drop + 1.0) / 2.0


def roc_auc(scores: ArrayLike, is_positive: ArrayLike) -> jax.Array:
    """Area under the ROC curve: P(score of a random positive > score of a random negative),
    ties counting one half (the Mann-Whitney U statistic / (P·N)).

    Computed from mid-ranks in O(M log M), with no M×M comparison matrix, so it scales to
    input-level detectors scored on a whole test set.

    Args:
        scores: float[M], higher meaning "more likely positive" (poisoned / trojaned).
        is_positive: bool[M] ground truth.

    Returns:
        float32 scalar in [0, 1]; NaN when there are no positives or no negatives.
    """
    scores, is_positive = _check_same_shape(scores=scores, is_positive=is_positive)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    is_positive = is_positive.astype(bool)
    scores = scores.astype(jnp.float32)
    ordered = jnp.sort(scores)
    # 1-based mid-rank of each score among all scores: tied scores share their mean rank.
    below = jnp.searchsorted(ordered, scores, side="left")
    through = jnp.searchsorted(ordered, scores, side="right")
    ranks = (below + through + 1).astype(jnp.float32) / 2.0
    num_pos = jnp.sum(is_positive).astype(jnp.float32)
    num_neg = scores.shape[0] - num_pos
    # Positive ranks minus their ranks among positives alone = (wins + ties/2) over negatives.
    u = jnp.sum(jnp.where(is_positive, ranks, 0.0)) - num_pos * (num_pos + 1.0) / 2.0
    defined = (num_pos > 0) & (num_neg > 0)
    return jnp.where(defined, u / jnp.where(defined, num_pos * num_neg, 1.0), jnp.nan)


def backdoor_metrics(
    predict_fn: Callable[[jax.Array], jax.Array],
    test_set: LabelledImages,
    triggered: TriggeredImages,
    *,
    batch_size: int = 512,
) -> dict[str, float]:
    """Clean accuracy, ASR, ASR over all images and robust accuracy of any model.

    `triggered` is the clean test set triggered with the attack's *test-time* transform:
    `jaxbd.attacks.triggered_test_set(key, test_set, attack)` (i.e. `attack.test_fn`, never
    the training-time `attack(...)`). Both sets are classified by `predict_fn` in
    fixed-shape batches: it is jitted once here for one batch shape
    `[min(batch_size, M), H, W, 3]` and the last batch is padded with zero images (their
    predictions are dropped), so one evaluation compiles once. The figures are those of
    `jaxbd.pipeline.stages.test_metrics.evaluate`, for a model outside the `Trainer` (your own
    flax/optax loop).

    Args:
        predict_fn: `images uint8[B, H, W, 3] -> logits float[B, C]`, traceable (it is
            jitted; normalize inside it, and use inference mode, e.g. BatchNorm running
            statistics).
        test_set: the clean test set of M images (a `jaxbd.data.Dataset`: `images`,
            `labels`).
        triggered: its triggered copy (a `jaxbd.attacks.TriggeredTestSet`: `images`,
            `labels` (the attacker's), `true_labels`).
        batch_size: images per call of `predict_fn`, a positive int.

    Returns:
        `{"clean_accuracy", "attack_success_rate", "asr_all_images", "robust_accuracy"}`
        as Python floats (definitions above and in docs/metrics.md: ASR and robust accuracy
        exclude images whose true label already is the attacker's label; NaN where no image
        is eligible).

    Raises:
        TypeError: if `test_set` is not a dataset (e.g. a bare array of images) or
            `triggered` not a triggered test set.
        ValueError: for a bad `batch_size`, or logits of a shape other than `[B, C]`.
    """
    # Duck-typed: this foundation module imports neither jaxbd.data nor jaxbd.attacks.
    if not all(hasattr(test_set, name) for name in ("images", "labels")):
        raise TypeError(
            f"test_set must be a jaxbd Dataset (images and labels), got {type(test_set).__name__}"
        )
    if not all(hasattr(triggered, name) for name in ("images", "labels", "true_labels")):
        raise TypeError(
            f"triggered must be a jaxbd TriggeredTestSet (images, labels and true_labels; "
            f"jaxbd.attacks.triggered_test_set), got {type(triggered).__name__}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")

    def predict_labels(images):
        logits = predict_fn(images)
        if isinstance(logits, tuple | list):  # e.g. a jaxbd model's (logits, features)
            raise ValueError(
                f"predict_fn must return logits [B, C], got a {type(logits).__name__} of "
                f"{len(logits)} (for a jaxbd model, return model.apply(...)[0])"
            )
        logits = jnp.asarray(logits)
        if logits.ndim != 2 or logits.shape[0] != images.shape[0]:
            raise ValueError(
                f"predict_fn must return logits [B, C] for images {images.shape}, got "
                f"shape {logits.shape}"
            )
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    jitted = jax.jit(predict_labels)  # one jit for both sets: same shape, one compilation
    clean = _predict_in_batches(jitted, test_set.images, batch_size)
    poisoned = _predict_in_batches(jitted, triggered.images, batch_size)
    return {
        "clean_accuracy": float(clean_accuracy(clean, test_set.labels)),
        "attack_success_rate": float(
            attack_success_rate(poisoned, triggered.labels, triggered.true_labels)
        ),
        "asr_all_images": float(asr_all_images(poisoned, triggered.labels)),
        "robust_accuracy": float(
            robust_accuracy(poisoned, triggered.labels, triggered.true_labels)
        ),
    }


def _predict_in_batches(predict_labels, images: np.ndarray, batch_size: int) -> np.ndarray:
    """int32[M] host predictions, from equal batches of min(batch_size, M) (last one padded)."""
    n = int(images.shape[0])
    if n == 0:
        return np.zeros((0,), np.int32)
    batch = min(batch_size, n)
    out = []
    for first in range(0, n, batch):
        x = np.asarray(images[first : first + batch])
        real = x.shape[0]
        if real < batch:  # pad, so the jitted function sees one shape only
            x = np.concatenate([x, np.zeros((batch - real, *x.shape[1:]), x.dtype)])
        out.append(predict_labels(x))  # dispatch all batches before reading any back
    return np.concatenate([np.asarray(jax.device_get(o)) for o in out])[:n]


def aggregate(values: Sequence[float] | ArrayLike) -> dict[str, float | int]:
    """Mean and sample standard deviation (ddof = 1) over repeated runs (e.g. seeds).

    Host-side (NumPy, float64), for reports.

    Args:
        values: the n per-run values.

    Returns:
        `{"mean": float, "std": float, "n": int}`. With n = 1 the sample std is undefined
        and is NaN; with n = 0 the mean is NaN too. A NaN value propagates to both.
    """
    values = np.asarray(values, np.float64).ravel()
    n = int(values.size)
    mean = float(values.mean()) if n else math.nan
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    return {"mean": mean, "std": std, "n": n}


def format_mean_std(values: Sequence[float] | ArrayLike, digits: int = 2) -> str:
    """ "mean ± std (n=k)", e.g. "94.12 ± 0.31 (n=5)", with `digits` decimals.

    Values are printed as given: multiply fractions by 100 first for percentages. With a
    single run there is no std: "94.12 (n=1)"; with none: "nan (n=0)".
    """
    stats = aggregate(values)
    if stats["n"] <= 1:  # no sample std to show
        return f"{stats['mean']:.{digits}f} (n={stats['n']})"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f} (n={stats['n']})"


def _fraction(hits: jax.Array, eligible: jax.Array) -> jax.Array:
    """sum(hits & eligible) / sum(eligible) as float32; NaN when nothing is eligible."""
    count = jnp.sum(eligible)
    num = jnp.sum(hits & eligible)
    return jnp.where(count > 0, num / jnp.maximum(count, 1), jnp.nan).astype(jnp.float32)


def _broadcast_target(target_labels: ArrayLike, predictions: jax.Array) -> jax.Array:
    target_labels = jnp.asarray(target_labels)
    if target_labels.ndim == 0:  # one target class for every image
        target_labels = jnp.broadcast_to(target_labels, predictions.shape)
    return target_labels


def _check_attack_args(predictions, target_labels, true_labels):
    predictions = jnp.asarray(predictions)
    target_labels = _broadcast_target(target_labels, predictions)
    return _check_same_shape(
        predictions=predictions, target_labels=target_labels, true_labels=true_labels
    )


def _check_same_shape(**arrays: ArrayLike) -> tuple[jax.Array, ...]:
    converted = {name: jnp.asarray(a) for name, a in arrays.items()}
    shapes = {name: a.shape for name, a in converted.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes must match: {listed}")
    return tuple(converted.values())
