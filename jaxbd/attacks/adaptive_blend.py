"""Adaptive-Blend (Qi, Xie, Li, Mahloujifar, Mittal 2023, "Revisiting the assumption of latent
separability for backdoor defenses", ICLR): a blended trigger weakened at training time so
that poisoned and clean samples do not separate in the model's latent space.

- Piece dropping: the trigger is cut into an s×s grid of pieces; each poisoned training image
  is blended only with a random subset of them (each piece dropped with probability
  `drop_probability`). At test time the whole trigger is blended.
- Regularization samples: a `conservatism` ratio of the poisoned training images carry the
  (partial) trigger but keep their true label.

`jaxbd.attacks.sampling` implements the two devices, shared with Adaptive-Patch
(`jaxbd.attacks.adaptive_patch`). Why they work, and how this differs from the reference
implementation (backdoor-toolbox): docs/attacks.md, "Adaptive-Blend".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.attacks.base import Attack
from jaxbd.attacks.patterns import blend_pattern, check_pattern
from jaxbd.attacks.pixels import blend
from jaxbd.attacks.sampling import regularized_labels, sample_kept_pieces
from jaxbd.attacks.validation import (
    check_inputs,
    check_opacity,
    check_probability,
    check_seed,
    check_target,
    is_int,
)


def adaptive_blend(
    *,
    target: int = 0,
    alpha: float = 0.3,
    pieces: int = 4,
    drop_probability: float = 0.5,
    conservatism: float = 0.5,
    test_alpha: float | None = None,
    pattern: str = "kitty",
    keep_pieces: int | None = None,
    seed: int = 0,
) -> Attack:
    """Builds the Adaptive-Blend attack.

    Args:
        target: class the backdoor maps triggered inputs to (a non-negative int; the range
            [0, C) is checked where C is known, in `poison_dataset`).
        alpha: blend opacity α in (0, 1] of the training trigger pieces:
            x' = round((1 − α)·x + α·T) on kept pieces, x elsewhere.
        pieces: s, the side of the grid the trigger is cut into (s×s pieces; the paper's 16
            pieces are s=4). A positive int, at most min(H, W) (checked at trace time).
        drop_probability: probability in [0, 1) that a piece is left out of a poisoned
            training image, independently per piece and image.
        conservatism: probability in [0, 1) that a poisoned training image is a
            regularization sample, which keeps its true label; the others get `target`.
        test_alpha: opacity in (0, 1] of the full test-time trigger; None uses `alpha`.
        pattern: the trigger T, "kitty" (the paper's Hello Kitty stand-in) or "noise"; see
            `jaxbd.attacks.patterns.blend_pattern`.
        keep_pieces: None for independent dropping, or an int k in [1, s²]: every poisoned
            training image gets exactly k pieces, chosen uniformly (`drop_probability` is
            then unused). k = s²/2 is the reference implementation's rule.
        seed: seed of the "noise" pattern.

    Returns:
        An `Attack`. `train_fn` blends a random subset of the pieces into each image
        (per-image randomness from the key, so it works batched and under `vmap` over
        per-example keys) and relabels all but the regularization samples to `target`.
        `test_fn` is deterministic: the whole trigger at `test_alpha`, labels `target`.
        Images are `uint8[..., H, W, 3]` of any leading batch shape and size.

    Raises:
        ValueError: for a hyper-parameter outside the ranges above.
    """
    name = "adaptive_blend"
    target = check_target(name, target)
    alpha = check_opacity(name, "alpha", alpha)
    test_alpha = alpha if test_alpha is None else check_opacity(name, "test_alpha", test_alpha)
    if not is_int(pieces) or pieces < 1:
        raise ValueError(f"{name}: pieces (the grid side s) must be a positive int, got {pieces!r}")
    pieces = int(pieces)
    drop_probability = check_probability(name, "drop_probability", drop_probability)
    conservatism = check_probability(name, "conservatism", conservatism)
    pattern = check_pattern(name, pattern)
    keep_pieces = _check_keep_pieces(name, keep_pieces, pieces * pieces)
    seed = check_seed(name, seed)

    def blend_trigger(images, opacity):
        return blend(images, blend_pattern(pattern, *images.shape[-3:-1], seed), opacity)

    def train_fn(key, images, labels):
        images, labels = check_inputs(name, images, labels)
        height, width = images.shape[-3:-1]
        ids = piece_ids(height, width, pieces)
        piece_key, label_key = jax.random.split(key)
        kept = sample_kept_pieces(
            piece_key, images.shape[:-3], pieces * pieces, drop_probability, keep_pieces
        )
        # bool[..., H, W, 1]: whether each pixel's piece is kept, gathered with the static
        # piece-id map (works for any batch shape, including none under vmap).
        mask = jnp.take(kept, ids, axis=-1)[..., None]
        # Kept pieces are exactly the full blend, so train and test triggers agree pixel-wise.
        triggered = jnp.where(mask, blend_trigger(images, alpha), images)
        return triggered, regularized_labels(label_key, labels, target, conservatism)

    def test_fn(key, images, labels):
        del key  # deterministic
        images, labels = check_inputs(name, images, labels)
        return blend_trigger(images, test_alpha), jnp.full_like(labels, target)

    return Attack(
        name=name,
        target=target,
        train_fn=train_fn,
        test_fn=test_fn,
        params=(
            ("alpha", alpha),
            ("pieces", pieces),
            ("drop_probability", drop_probability),
            ("conservatism", conservatism),
            ("test_alpha", test_alpha),
            ("pattern", pattern),
            ("keep_pieces", keep_pieces),
            ("seed", seed),
        ),
    )


def piece_ids(height: int, width: int, pieces: int) -> np.ndarray:
    """int32[H, W]: the grid piece (row-major, in [0, s²)) each pixel belongs to.

    Row r is in piece row ⌊r·s/H⌋ and column c in piece column ⌊c·s/W⌋, so the grid covers
    the whole image and piece sizes differ by at most one pixel.

    Raises:
        ValueError: when s exceeds H or W (some pieces would be empty).
    """
    if pieces > height or pieces > width:
        raise ValueError(
            f"adaptive_blend: a {pieces}×{pieces} grid of trigger pieces does not fit in "
            f"{height}×{width} images (pieces must be at most min(H, W))"
        )
    return _cached_piece_ids(int(height), int(width), int(pieces))


@functools.lru_cache(maxsize=64)
def _cached_piece_ids(height: int, width: int, pieces: int) -> np.ndarray:
    rows = np.arange(height) * pieces // height
    cols = np.arange(width) * pieces // width
    ids = (rows[:, None] * pieces + cols[None, :]).astype(np.int32)
    ids.setflags(write=False)
    return ids


def _check_keep_pieces(attack: str, keep_pieces, num_pieces: int) -> int | None:
    if keep_pieces is None:
        return None
    if not is_int(keep_pieces) or not 1 <= keep_pieces <= num_pieces:
        raise ValueError(
            f"{attack}: keep_pieces must be None or an int in [1, {num_pieces}] (the number of "
            f"pieces), got {keep_pieces!r}"
        )
    return int(keep_pieces)
