"""`grad_align`: the earlier study's "CRAIG", kept as a named reproduction method.

Per class c, each example's last-layer weight gradient g_i = (p_i − onehot(y_i)) ⊗ h_i is
normalized, the unit gradients are summed into the class direction T_c = Σ_{i∈c} g_i/‖g_i‖
(a C×F matrix), and the k_c examples with the largest cosine(g_i, T_c) are kept, unweighted.

This is *not* CRAIG. The score of an example does not depend on which others are chosen, so
the objective is modular and its "greedy" maximization is just a per-class top-k: there is no
coverage, no clustering and no weights. It is kept because an earlier study reported it as
CRAIG and it removes most BadNets poisons; real CRAIG (Mirzasoleiman, Bilmes, Leskovec 2020,
"Coresets for data-efficient training of machine learning models") is `jaxbd.select.craig`.

Nothing N×C×F is materialized: with g_i = a_i ⊗ h_i, g_i · T = a_iᵀ T h_i and
‖g_i‖ = ‖a_i‖ ‖h_i‖. Examples with a zero gradient (e.g. all-zero features) get cosine 0.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbd.select.base import Selection, class_budgets, make_selection, num_to_select
from jaxbd.select.method import Inputs, Method

_HIGHEST = lax.Precision.HIGHEST


@partial(jax.jit, static_argnames=("num_classes", "chunk"))
def _scores(logits, labels, features, valid, *, num_classes, chunk):
    """Cosines of the padded examples; see `grad_align_scores`. All arrays have N_pad rows."""
    n_pad, c = logits.shape
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    errors = probs - jax.nn.one_hot(labels, c, dtype=jnp.float32)
    errors = jnp.where(valid[:, None], errors, 0.0)
    features = jnp.where(valid[:, None], features.astype(jnp.float32), 0.0)
    norms = jnp.linalg.norm(errors, axis=1) * jnp.linalg.norm(features, axis=1)
    inv = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
    unit_errors = errors * inv[:, None]  # g_i/‖g_i‖ = (a_i/‖g_i‖) ⊗ h_i
    member = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * valid[:, None]

    def split(x):
        return x.reshape(n_pad // chunk, chunk, *x.shape[1:])

    def accumulate(total, batch):
        m, a, h = batch
        # Σ_i member_ik a_i ⊗ h_i for every class k, as one [chunk, K·C] × [chunk, F] matmul.
        ma = (m[:, :, None] * a[:, None, :]).reshape(chunk, -1)
        return total + jnp.dot(ma.T, h, precision=_HIGHEST).reshape(total.shape), None

    directions = jnp.zeros((num_classes, c, features.shape[1]), jnp.float32)
    directions, _ = lax.scan(
        accumulate, directions, (split(member), split(unit_errors), split(features))
    )
    direction_norms = jnp.sqrt(jnp.sum(directions**2, axis=(1, 2)))

    def dots(batch):
        y, a, h = batch
        # a_iᵀ T_{y_i} h_i, gathering each example's class direction ([chunk, C, F]).
        t = directions[y]
        return jnp.einsum("bc,bcf,bf->b", a, t, h, precision=_HIGHEST)

    dot = lax.map(dots, (split(labels), split(unit_errors), split(features))).reshape(-1)
    denom = direction_norms[labels]
    return jnp.where((norms > 0) & (denom > 0), dot / jnp.where(denom > 0, denom, 1.0), 0.0)


def grad_align_scores(logits, labels, features, *, num_classes: int | None = None) -> np.ndarray:
    """cosine(g_i, T_{y_i}) of every example (0 for zero gradients or a zero direction).

    A host function, not jittable (like `craig.gradient_proxy`): it checks the inputs on
    concrete values and returns NumPy scores, so it fails under `jax.jit`; the scoring itself
    runs jitted inside, in fixed-size chunks.

    Args:
        logits: float[N, C] inference-mode model outputs.
        labels: int[N] observed labels in [0, C).
        features: float[N, F] penultimate features h_i.
        num_classes: number of label classes K; defaults to max(labels) + 1 (K ≤ C).

    Returns:
        float32[N] cosines in [-1, 1].

    Raises:
        ValueError: for mismatched shapes, non-finite inputs or labels out of range.
    """
    logits = jnp.asarray(logits)
    features = jnp.asarray(features)
    labels = np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or features.ndim != 2:
        raise ValueError(
            f"logits and features must be [N, C] and [N, F], got {logits.shape}, {features.shape}"
        )
    n, c = logits.shape
    if features.shape[0] != n or labels.size != n:
        raise ValueError(
            f"{n} logits, {features.shape[0]} feature rows and {labels.size} labels must agree"
        )
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if n else 0
    if num_classes > c:
        raise ValueError(f"num_classes={num_classes} exceeds the {c} logits per example")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    if not (bool(jnp.isfinite(logits).all()) and bool(jnp.isfinite(features).all())):
        raise ValueError("logits or features contain NaN or infinite values")
    if n == 0:
        return np.zeros(0, np.float32)
    # Chunk so that one chunk's gathered directions [chunk, C, F] stay around 16M floats.
    per_example = max(num_classes * c, c * features.shape[1])
    chunk = int(min(4096, max(1, 2 ** int(np.log2(max(1, (1 << 24) // per_example))))))
    chunk = min(chunk, 1 << int(np.ceil(np.log2(n))))
    n_pad = -(-n // chunk) * chunk

    def pad(x):
        return jnp.pad(x, ((0, n_pad - n),) + ((0, 0),) * (x.ndim - 1))

    valid = jnp.arange(n_pad) < n
    scores = _scores(
        pad(logits),
        pad(jnp.asarray(labels, jnp.int32)),
        pad(features),
        valid,
        num_classes=num_classes,
        chunk=chunk,
    )
    return np.asarray(scores[:n])


def grad_align(
    logits, labels, features, fraction: float, *, num_classes: int | None = None
) -> Selection:
    """The earlier study's gradient-alignment ranking: per-class top-k by cosine to T_c.

    A modular objective (per-class top-k), not CRAIG's facility location; kept as a named
    reproduction method (see the module docstring). A host function, not jittable: it ranks
    on the host and returns NumPy arrays.

    Args:
        logits: float[N, C] inference-mode model outputs.
        labels: int[N] observed labels.
        features: float[N, F] penultimate features.
        fraction: in (0, 1]; the subset has `num_to_select(N, fraction)` examples, split over
            classes by `class_budgets`.
        num_classes: K; defaults to max(labels) + 1.

    Returns:
        An unweighted `Selection`: in each class the k_c highest cosines, ties to the lower
        index.

    Raises:
        ValueError: for mismatched shapes, non-finite inputs or bad labels.
    """
    labels = np.asarray(labels).reshape(-1)
    scores = grad_align_scores(logits, labels, features, num_classes=num_classes)
    budgets = class_budgets(labels, num_to_select(labels.size, fraction), num_classes)
    chosen = []
    for c, budget in enumerate(budgets):
        if budget == 0:
            continue
        members = np.flatnonzero(labels == c)
        # Highest cosine first; lexsort's stability keeps equal scores in index order.
        order = members[np.lexsort((members, -scores[members].astype(np.float64)))]
        chosen.append(order[: int(budget)])
    return make_selection(np.concatenate(chosen) if chosen else np.zeros(0, np.int64))


def _run(inputs: Inputs) -> tuple[Selection, None]:
    selection = grad_align(
        inputs.logits,
        inputs.labels,
        inputs.features,
        inputs.fraction,
        num_classes=inputs.num_classes,
    )
    return selection, None


METHOD = Method(selector=grad_align, run=_run, outputs=True)
"""One pretraining run; its final model's logits and features."""
