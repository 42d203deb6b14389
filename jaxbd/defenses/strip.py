"""STRIP: input-level backdoor detection by the entropy of superimposed predictions.

Gao et al. 2019, "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks" (ACSAC).
A trigger dominates a backdoored model's prediction, so an input carrying it keeps being
classified as the target class however strongly another image is superimposed on it: the
predictions on its superimposed copies have low entropy. A clean input's prediction follows
whatever was superimposed, so its entropy is high. For each input x and N clean overlay
images x_o (the defender's), STRIP scores

    H(x) = (1 / N) Σ_o  −Σ_c p_c(x ⊕ x_o) log2 p_c(x ⊕ x_o)   (bits),

with ⊕ the superimposition (`superimpose`), and flags x as triggered when H(x) is *below* a
threshold set at a target false-rejection rate on held-out clean inputs (`frr_threshold`).

Everything here is pure and works with any `logits_fn`; `strip_scores` runs all inputs ×
overlays as fixed-shape jitted blocks, so its cost is one compilation and ⌈M / k⌉ calls of
k·N images, never a Python loop over inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxbd.settings import require

BLENDS = ("sum", "half")
"""Superimpositions: "sum" = clip(x + x_o, 0, 255) (the paper's, OpenCV's saturating
`addWeighted(x, 1, x_o, 1, 0)`); "half" = round(0.5·x + 0.5·x_o)."""

LogitsFn = Callable[[jax.Array], jax.Array]
"""`logits_fn(images uint8[B, H, W, 3]) -> float32[B, C]`, normalization included."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StripSettings:
    """STRIP's hyper-parameters (`config.detector.strip`).

    Attributes:
        overlays: N, clean images superimposed on each input (the paper's default 100),
            drawn from the defender's tuning images.
        blend: "sum" (the paper's) or "half"; see `BLENDS`.
        frr: the target false-rejection rate in (0, 1) that sets the threshold on the
            defender's held-out clean images (`frr_threshold`).
        batch_size: superimposed images per forward pass; inputs are scored in blocks of
            max(1, batch_size // overlays), so a pass holds k·N images.
    """

    overlays: int = 100
    blend: str = "sum"
    frr: float = 0.01
    batch_size: int = 256
    # The superimposed images' logits only.
    model_needs: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        require(
            _is_int(self.overlays) and self.overlays >= 1, "overlays", "must be >= 1", self.overlays
        )
        require(self.blend in BLENDS, "blend", f"must be one of {list(BLENDS)}", self.blend)
        require(
            isinstance(self.frr, int | float) and 0 < self.frr < 1,
            "frr",
            "must be in (0, 1)",
            self.frr,
        )
        require(
            _is_int(self.batch_size) and self.batch_size >= 1,
            "batch_size",
            "must be >= 1",
            self.batch_size,
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def entropy_bits(logits: ArrayLike) -> jax.Array:
    """Entropy in bits of softmax(logits) over the last axis.

    Args:
        logits: float[..., C].

    Returns:
        float32[...], in [0, log2 C]: log2 C for uniform logits, ~0 for a confident one.
    """
    logits = jnp.asarray(logits, jnp.float32)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(log_p)
    # A class with probability exactly 0 (a -inf logit) contributes 0, not 0 · -inf = NaN.
    terms = jnp.where(p > 0, p * log_p, 0.0)
    return -jnp.sum(terms, axis=-1) / jnp.log(2.0)


def superimpose(images: ArrayLike, overlays: ArrayLike, blend: str = "sum") -> jax.Array:
    """Superimposes overlays on images (broadcasting), in uint8 pixels.

    Args:
        images: uint8[..., H, W, 3].
        overlays: uint8[..., H, W, 3], broadcastable against `images`.
        blend: "sum": clip(x + x_o, 0, 255); "half": round(0.5·x + 0.5·x_o), rounding
            halves to even (`jnp.round`, like `np.round`).

    Returns:
        uint8 images of the broadcast shape.
    """
    x = jnp.asarray(images).astype(jnp.int32)
    o = jnp.asarray(overlays).astype(jnp.int32)
    if blend == "sum":
        mixed = jnp.clip(x + o, 0, 255)
    elif blend == "half":
        # (x + o) / 2 is exact in float32 for pixel values, so only the .5 cases round.
        mixed = jnp.round((x + o).astype(jnp.float32) / 2.0)
    else:
        raise ValueError(f"blend must be one of {list(BLENDS)}, got {blend!r}")
    return mixed.astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("blend",))
def _block_scores(logits_fn, inputs, overlays, *, blend):
    """Mean entropy of one block: inputs uint8[k, H, W, 3] × overlays uint8[N, H, W, 3] ->
    float32[k]. `logits_fn` is a traced argument (a `jax.tree_util.Partial`), so a model's
    variables inside it are inputs of the program, not constants compiled into it, and
    blocks of the same shape with the same function reuse one compilation."""
    k, n = inputs.shape[0], overlays.shape[0]
    mixed = superimpose(inputs[:, None], overlays[None], blend)  # [k, N, H, W, 3]
    logits = logits_fn(mixed.reshape(k * n, *mixed.shape[2:]))
    return entropy_bits(logits).reshape(k, n).mean(axis=1)


def strip_scores(
    logits_fn: LogitsFn,
    images: ArrayLike,
    overlays: ArrayLike,
    *,
    blend: str = "sum",
    batch_size: int = 256,
) -> jax.Array:
    """STRIP's score of each input: the mean prediction entropy (bits) over its overlays.

    Inputs are scored in blocks of k = max(1, batch_size // N) inputs, each forward pass
    holding the k·N superimposed images of one block; the last block is padded (with
    zeros) to the same shape and its padding dropped, so one compilation serves any M.

    Args:
        logits_fn: `images uint8[B, H, W, 3] -> logits float32[B, C]`, normalization inside;
            jit-traceable. A `jax.tree_util.Partial` (e.g. of a module's apply and its
            variables) is traced as an argument: its arrays are not compiled in as
            constants, and calls with the same Partial's function share the compilation.
        images: uint8[M, H, W, 3] the inputs to judge.
        overlays: uint8[N, H, W, 3] clean images superimposed on every input (N >= 1).
        blend: "sum" or "half" (see `superimpose`).
        batch_size: superimposed images per forward pass (see above).

    Returns:
        float32[M] scores on the device; low = likely triggered.

    Raises:
        ValueError: for non-uint8 or mismatched image shapes, no overlays, an unknown blend
            or a batch size < 1.
    """
    images, overlays = np.asarray(images), np.asarray(overlays)
    for name, array in (("images", images), ("overlays", overlays)):
        if array.dtype != np.uint8 or array.ndim != 4:
            raise ValueError(f"{name} must be uint8[*, H, W, C], got {array.dtype}{array.shape}")
    if images.shape[1:] != overlays.shape[1:]:
        raise ValueError(
            f"images {images.shape[1:]} and overlays {overlays.shape[1:]} differ in shape"
        )
    if len(overlays) < 1:
        raise ValueError("at least one overlay is needed")
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {list(BLENDS)}, got {blend!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(logits_fn, jax.tree_util.Partial):
        logits_fn = jax.tree_util.Partial(logits_fn)
    m = len(images)
    if m == 0:
        return jnp.zeros((0,), jnp.float32)
    k = max(1, batch_size // len(overlays))
    num_blocks = -(-m // k)
    padded = np.zeros((num_blocks * k, *images.shape[1:]), np.uint8)
    padded[:m] = images
    blocks = jnp.asarray(padded.reshape(num_blocks, k, *images.shape[1:]))
    overlays = jnp.asarray(overlays)
    # Dispatch is asynchronous: the blocks queue on the device without a host round trip.
    scores = [_block_scores(logits_fn, blocks[b], overlays, blend=blend) for b in range(num_blocks)]
    return jnp.concatenate(scores)[:m]


def frr_threshold(clean_scores: ArrayLike, frr: float = 0.01) -> float:
    """The threshold at a target false-rejection rate, from held-out clean scores.

    An input is flagged as triggered when its score is strictly BELOW the threshold. With
    the K clean scores sorted, s_(0) <= ... <= s_(K-1), the threshold is s_(j) with
    j = min(floor(frr·K), K − 1) (0-based): the largest sorted score with at most frr·K
    clean scores strictly below it, so the held-out FRR is floor(frr·K) / K <= frr when the
    scores have no ties (fewer are rejected when s_(j) is tied). E.g. K = 500, frr = 0.01:
    the 6th smallest score, 5 of 500 rejected; K = 50: the smallest, none rejected. (Gao
    et al. fitted a normal distribution to the clean entropies instead; this is the
    distribution-free quantile.)

    Args:
        clean_scores: float[K], STRIP scores of held-out clean inputs (K >= 1), never the
            inputs being judged.
        frr: the target false-rejection rate, in (0, 1).

    Returns:
        The threshold (a Python float).

    Raises:
        ValueError: for an empty or non-finite score array or frr outside (0, 1).
    """
    scores = np.sort(np.asarray(clean_scores, np.float64).ravel())
    if scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ValueError(f"need at least one finite clean score, got {scores.size} scores")
    if not (isinstance(frr, int | float) and 0 < frr < 1):
        raise ValueError(f"frr must be in (0, 1), got {frr!r}")
    # The epsilon keeps floor(0.29 · 100) = 28.999999999999996 from dropping to 28.
    j = min(math.floor(frr * scores.size + 1e-9), scores.size - 1)
    return float(scores[j])


def flag_triggered(scores: ArrayLike, threshold: float) -> np.ndarray:
    """bool[M]: inputs flagged as triggered (score < threshold, low entropy)."""
    return np.asarray(scores) < threshold
