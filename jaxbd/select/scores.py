"""Per-example difficulty scores (Paul, Ganguli, Dziugaite 2021, "Deep learning on a data diet").

- EL2N(x, y) = ‖softmax(f(x)) − onehot(y)‖₂, from logits alone.
- GraNd(x, y) = ‖∇_θ ℓ(f(x), y)‖₂ over all parameters.

Both use the model in inference mode (BatchNorm running statistics) on un-augmented images.
GraNd differentiates one example at a time with `vmap(grad)` over fixed-size chunks and
reduces every gradient leaf to its squared norm inside the jitted function, so the
chunk × parameters gradient matrix only ever exists as a transient inside XLA and never
reaches the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbd.data import augment as augment_lib
from jaxbd.select.method import Inputs, Method
from jaxbd.select.ranking import check_keep, rank_inputs, rank_within_class
from jaxbd.settings import require


@jax.jit
def el2n_scores(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """EL2N scores.

    Args:
        logits: float[N, C].
        labels: int[N] (observed labels).

    Returns:
        float32[N], ‖softmax(logits) − onehot(labels)‖₂ in [0, √2].
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    error = probs - jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    return jnp.sqrt(jnp.sum(error * error, axis=-1))


def make_grand_fn(
    model: nn.Module, *, mean: Sequence[float], std: Sequence[float]
) -> Callable[..., jax.Array]:
    """Builds a jitted `grand(params, batch_stats, images uint8[B, H, W, 3], labels int32[B])
    -> float32[B]` of per-example gradient norms over every parameter.

    Args:
        model: a flax module returning `(logits, features)`.
        mean: normalization mean.
        std: normalization standard deviation.
    """

    def example_loss(params, batch_stats, image, label):
        x = augment_lib.normalize(image[None], mean, std)
        logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), label[None]
        )[0]

    def squared_norm(tree):
        return sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(tree))

    def grand(params, batch_stats, images, labels):
        def one(image, label):
            return squared_norm(jax.grad(example_loss)(params, batch_stats, image, label))

        return jnp.sqrt(jax.vmap(one)(images, labels))

    return jax.jit(grand)


def grand_scores(
    grand_fn: Callable[..., jax.Array],
    params,
    batch_stats,
    images,
    labels,
    *,
    chunk_size: int = 128,
) -> np.ndarray:
    """GraNd scores of a whole dataset in fixed-size chunks (one compilation).

    Args:
        grand_fn: from `make_grand_fn`.
        params: model parameters.
        batch_stats: BatchNorm statistics.
        images: uint8[N, H, W, 3], host or device.
        labels: int[N].
        chunk_size: examples per call; the last chunk is padded and the padding dropped.

    Returns:
        float32[N] on the host.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = int(images.shape[0])
    labels = jnp.asarray(labels, jnp.int32)
    out = []
    for first in range(0, n, chunk_size):
        x = jnp.asarray(images[first : first + chunk_size])
        y = labels[first : first + chunk_size]
        real = int(x.shape[0])
        if real < chunk_size:
            x = jnp.concatenate([x, jnp.zeros((chunk_size - real, *x.shape[1:]), x.dtype)])
            y = jnp.concatenate([y, jnp.zeros((chunk_size - real,), y.dtype)])
        out.append(grand_fn(params, batch_stats, x, y)[:real])
    if not out:
        return np.zeros((0,), np.float32)
    return np.asarray(jax.device_get(jnp.concatenate(out)), np.float32)


PARALLEL = ("auto", "vmap", "sequential")
"""How an EL2N/GraNd ensemble trains: members in one vmapped step, one after another, or
"auto" (sequential on the CPU, vmap on accelerators)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoreSettings:
    """EL2N and GraNd scoring (Paul, Ganguli, Dziugaite 2021, "Deep learning on a data diet").

    Attributes:
        ensemble_size: models whose scores are averaged (the paper used 10).
        score_epochs: scores taken after these pretraining epochs, averaged (each in
            [1, pretrain_epochs], checked by `SelectSettings`).
        keep: "hard" (highest scores first) or "easy" (`KEEP`).
        offset: fraction of each class's ranking skipped first, in [0, 1).
        chunk_size: GraNd's examples per `vmap(grad)` call.
        parallel: how the ensemble trains (`PARALLEL`).
    """

    ensemble_size: int = 4
    score_epochs: tuple[int, ...] = (10,)
    keep: str = "hard"
    offset: float = 0.0
    chunk_size: int = 128
    parallel: str = "auto"

    def __post_init__(self):
        if isinstance(self.score_epochs, list):
            object.__setattr__(self, "score_epochs", tuple(self.score_epochs))
        require(self.ensemble_size >= 1, "ensemble_size", "must be >= 1", self.ensemble_size)
        check_keep(self.keep, self.offset)
        require(
            self.parallel in PARALLEL, "parallel", f"must be one of {list(PARALLEL)}", self.parallel
        )
        require(self.chunk_size >= 1, "chunk_size", "must be >= 1", self.chunk_size)


def score_settings(select: Any) -> dict[str, Any]:
    """EL2N's and GraNd's effective settings (`SelectSettings.effective`): `select.score`'s,
    or with `variant="study"` the earlier study's: one model, scores averaged over epochs
    2..pretrain_epochs, keep the easiest.

    Returns:
        ensemble_size, score_epochs, keep, offset.
    """
    if select.variant == "study":
        return dict(
            ensemble_size=1,
            score_epochs=tuple(range(2, select.pretrain_epochs + 1)),
            keep="easy",
            offset=0.0,
        )
    s = select.score
    return dict(
        ensemble_size=s.ensemble_size,
        score_epochs=tuple(s.score_epochs),
        keep=s.keep,
        offset=s.offset,
    )


def _el2n(inputs: Inputs) -> tuple:
    """EL2N after each scoring epoch, averaged over the epochs, then over the members."""
    epochs = np.asarray(inputs.effective["score_epochs"]) - 1
    per_member = [np.asarray(r.el2n)[epochs].mean(axis=0) for r in inputs.records]
    return rank_inputs(inputs, np.mean(per_member, axis=0))


def _grand(inputs: Inputs) -> tuple:
    """GraNd summed over the scoring epochs during pretraining: averaged, then over members."""
    epochs = np.asarray(inputs.effective["score_epochs"]) - 1
    per_member = [np.asarray(r.grand) / len(epochs) for r in inputs.records]
    return rank_inputs(inputs, np.mean(per_member, axis=0))


EL2N = Method(
    selector=rank_within_class,
    run=_el2n,
    ensemble=True,
    section="score",
    settings=ScoreSettings,
    variants=True,
    effective=score_settings,
)
"""An ensemble of pretraining runs, EL2N recorded after the scoring epochs."""

GRAND = Method(
    selector=rank_within_class,
    run=_grand,
    ensemble=True,
    gradient_norms=True,
    section="score",
    settings=ScoreSettings,
    variants=True,
    effective=score_settings,
)
"""An ensemble of pretraining runs, gradient norms recorded at the scoring epochs."""
