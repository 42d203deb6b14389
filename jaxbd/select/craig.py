"""CRAIG: weighted coresets by per-class facility location.

Mirzasoleiman, Bilmes, Leskovec 2020, "Coresets for data-efficient training of machine
learning models".

CRAIG picks, in each class, the medoids of a greedy facility-location clustering of the
examples' gradient proxies, and weights each medoid by its cluster size, so that the weighted
subset's gradient approximates the full set's. The proxies come from a pretrained model in
inference mode (`gradient_proxy`): the gradient of the cross-entropy with respect to the
last layer's pre-activation, p − onehot(y), optionally joined with the penultimate features.

An earlier study's "CRAIG" was a per-class cosine ranking without weights; that method lives
on, under its own name, in `jaxbd.select.grad_align`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.select.base import Selection, class_budgets, make_selection, num_to_select
from jaxbd.select.facility_location import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MAX_MATRIX_BYTES,
    OuterProduct,
    facility_location_groups,
)
from jaxbd.select.greedy import GREEDY
from jaxbd.select.method import Inputs, Method
from jaxbd.settings import require

PROXIES = ("error", "concat", "outer")
"""The gradient-proxy kinds of `gradient_proxy` (the values of `config.select.craig.proxy`)."""
PROXY_KINDS = PROXIES  # the former name

__all__ = ["PROXIES", "PROXY_KINDS", "OuterProduct", "craig", "gradient_proxy"]


@jax.jit
def _errors(logits, labels):
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return probs - jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)


def gradient_proxy(logits, labels, features=None, *, kind: str = "error"):
    """CRAIG's per-example gradient proxy from inference-mode model outputs.

    A host function, not jittable: it checks the labels' range on concrete values (reading
    them back from the device) and returns an `OuterProduct` for "outer", so calling it
    under `jax.jit` fails. Call it outside `jit` on the model's outputs; its arithmetic
    (softmax − onehot) runs jitted inside.

    Args:
        logits: float[N, C] model outputs.
        labels: int[N] observed (possibly poisoned) labels in [0, C).
        features: float[N, F] penultimate features; needed by "concat" and "outer", ignored
            by "error".
        kind: "error": e = softmax(logits) − onehot(labels), float32[N, C], the gradient of
            the cross-entropy with respect to the last-layer pre-activation.
            "concat": [e, features], float32[N, C + F].
            "outer": the last-layer weight gradient e ⊗ features, as an `OuterProduct`
            (float32[N, C] and float32[N, F] factors); never materialized.

    Returns:
        A float32 device array or an `OuterProduct`, for `craig`.

    Raises:
        ValueError: for an unknown kind, mismatched shapes or labels outside [0, C).
    """
    if kind not in PROXIES:
        raise ValueError(f"kind must be one of {PROXIES}, got {kind!r}")
    logits = jnp.asarray(logits)
    labels_np = np.asarray(labels).reshape(-1)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape [N, C], got {logits.shape}")
    n, num_classes = logits.shape
    if labels_np.size != n:
        raise ValueError(f"{labels_np.size} labels for {n} logits")
    if n and (labels_np.min() < 0 or labels_np.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got [{labels_np.min()}, {labels_np.max()}]"
        )
    errors = _errors(logits, jnp.asarray(labels_np, jnp.int32))
    if kind == "error":
        return errors
    if features is None:
        raise ValueError(f"kind={kind!r} needs the penultimate features")
    features = jnp.asarray(features, jnp.float32)
    if features.ndim != 2 or features.shape[0] != n:
        raise ValueError(f"features must have shape [{n}, F], got {features.shape}")
    if kind == "concat":
        return jnp.concatenate([errors, features], axis=1)
    return OuterProduct(errors, features)


def craig(
    features,
    labels,
    fraction: float,
    *,
    greedy: str = "exact",
    key: jax.Array | None = None,
    epsilon: float = 0.1,
    num_classes: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    lazy_batch: int | None = None,
    max_matrix_bytes: int = DEFAULT_MAX_MATRIX_BYTES,
    blocks_per_call: int | None = None,
    normalize: bool = False,
) -> Selection:
    """CRAIG coreset: per-class greedy facility location, weighted by cluster sizes.

    Class c (by observed label) with members V_c gets the budget k_c of
    `class_budgets(labels, num_to_select(N, fraction), C)`; its medoids maximize
    F_c(S) = Σ_{i∈V_c} max_{j∈S} (d_max,c − ‖g_i − g_j‖) greedily, and each medoid j gets the
    weight γ_j = |{i ∈ V_c : j = argmax_{s∈S} s_is}| (ties to the earliest pick), so each
    class's weights sum to |V_c|. Classes with budget 0 are skipped. All classes' similarity
    computations and greedy loops run on the device, several classes per jitted call.

    The weights are raw cluster sizes by default: integers ≥ 1 (a medoid is in its own
    cluster) summing to the number of examples in the classes with a nonzero budget (N when
    every class gets one), i.e. a mean of about 1 / fraction. Used as per-example loss
    weights they scale the loss, and so the effective learning rate, by that mean unless
    normalized; jaxbd's `Trainer` normalizes a selection's weights to mean 1 itself.
    `normalize=True` returns them already rescaled to sum to the number selected (mean 1,
    the convention of an unweighted subset), keeping their ratios.

    Args:
        features: gradient proxies from `gradient_proxy`: float[N, d] or an `OuterProduct`.
        labels: int[N] observed labels.
        fraction: in (0, 1]; the subset has `num_to_select(N, fraction)` examples.
        greedy: "exact", "lazy" (same picks as exact, faster) or "stochastic".
        key: PRNG key for stochastic greedy (class c uses `fold_in(key, c)`); ignored by the
            deterministic variants.
        epsilon: stochastic greedy's ε in (0, 1).
        num_classes: C; defaults to max(labels) + 1.
        block_size, lazy_batch, max_matrix_bytes, blocks_per_call: device tiling and memory, see
            `jaxbd.select.facility_location.facility_location_groups`.
        normalize: rescale the weights to sum to the number selected (mean 1) instead of
            returning raw cluster sizes.

    Returns:
        A `Selection` of canonical indices with float32 weights: cluster sizes, or with
        `normalize` cluster sizes × k / N' (k selected, N' the examples of the selected
        classes), which sum to k up to float32 rounding.

    Raises:
        ValueError: for mismatched shapes, labels that are not integers or not in [0, C),
            bad settings, or a missing key for stochastic greedy.
    """
    labels = np.asarray(labels).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        # Checked here: NumPy's own error (from bincount) names a cast rule, not the labels.
        raise ValueError(f"labels must be integers (class indices), got dtype {labels.dtype}")
    if not isinstance(normalize, bool):
        raise ValueError(f"normalize must be a bool, got {normalize!r}")
    shape = np.shape(features.left if isinstance(features, OuterProduct) else features)
    if len(shape) != 2:
        raise ValueError(f"gradient proxies must have shape [N, d], got {shape}")
    if shape[0] != labels.size:
        raise ValueError(f"{shape[0]} gradient proxies for {labels.size} labels")
    budgets = class_budgets(labels, num_to_select(labels.size, fraction), num_classes)
    if greedy == "stochastic" and key is None:
        raise ValueError("stochastic greedy needs a PRNG key, e.g. key=jax.random.key(0)")
    classes = [c for c, budget in enumerate(budgets) if budget > 0]
    results = facility_location_groups(
        features,
        [np.flatnonzero(labels == c) for c in classes],
        [int(budgets[c]) for c in classes],
        greedy=greedy,
        keys=[jax.random.fold_in(key, c) for c in classes] if greedy == "stochastic" else None,
        epsilon=epsilon,
        block_size=block_size,
        lazy_batch=lazy_batch,
        max_matrix_bytes=max_matrix_bytes,
        blocks_per_call=blocks_per_call,
    )
    indices = np.concatenate([r.order for r in results]) if results else np.zeros(0, np.int64)
    weights = np.concatenate([r.weights for r in results]) if results else np.zeros(0)
    if normalize and weights.size:
        # In float64 from the integer sizes, so the rescaled weights round once, at the end.
        sizes = np.asarray(weights, np.float64)
        weights = sizes * (sizes.size / sizes.sum())
    return make_selection(indices, weights)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CraigSettings:
    """CRAIG (Mirzasoleiman, Bilmes, Leskovec 2020, "Coresets for data-efficient training of
    machine learning models").

    Attributes:
        proxy: the gradient proxy, one of `PROXIES` (see `jaxbd.select.craig.gradient_proxy`).
        greedy: the facility-location greedy, one of `GREEDY` ("lazy" picks what "exact"
            does, faster).
        epsilon: stochastic greedy's ε, in (0, 1).
    """

    proxy: str = "error"
    greedy: str = "lazy"
    epsilon: float = 0.1

    def __post_init__(self):
        require(self.proxy in PROXIES, "proxy", f"must be one of {list(PROXIES)}", self.proxy)
        require(self.greedy in GREEDY, "greedy", f"must be one of {list(GREEDY)}", self.greedy)
        require(0 < self.epsilon < 1, "epsilon", "must be in (0, 1)", self.epsilon)


def _run(inputs: Inputs) -> tuple[Selection, None]:
    """CRAIG on the gradient proxies of member 0's final model (`select.craig`)."""
    c = inputs.settings
    proxy = gradient_proxy(inputs.logits, inputs.labels, inputs.features, kind=c.proxy)
    selection = craig(
        proxy,
        inputs.labels,
        inputs.fraction,
        greedy=c.greedy,
        key=inputs.key,
        epsilon=c.epsilon,
        num_classes=inputs.num_classes,
    )
    return selection, None


METHOD = Method(selector=craig, run=_run, outputs=True, section="craig", settings=CraigSettings)
"""One pretraining run; its final model's logits and features."""
