"""Adaptive-Patch (Qi, Xie, Li, Mahloujifar, Mittal 2023, "Revisiting the assumption of latent
separability for backdoor defenses", ICLR): a trigger made of several small patches, weakened
at training time so that poisoned samples do not separate from clean ones in latent space.

The trigger is k small patches at fixed positions, generated from `seed` (no resource files;
see `patch_layout`). Each poisoned training image gets a random subset of them,
semi-transparent (opacity `opacity`), and a `conservatism` ratio of the poisoned training
images keep their true label (regularization samples). At test time all k patches are
stamped, by default fully opaque. Piece sampling and regularization labels are those of
Adaptive-Blend (`jaxbd.attacks.sampling`).

How this differs from the paper's reference implementation (backdoor-toolbox), and which
settings reproduce it: docs/attacks.md, "Adaptive-Patch".
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.attacks.base import Attack
from jaxbd.attacks.pixels import blend
from jaxbd.attacks.sampling import regularized_labels, sample_kept_pieces
from jaxbd.attacks.validation import (
    check_inputs,
    check_opacity,
    check_positive_int,
    check_probability,
    check_seed,
    check_target,
    is_int,
)


def adaptive_patch(
    *,
    target: int = 0,
    num_patches: int = 4,
    patch_size: int | Sequence[int] = 4,
    opacity: float = 0.5,
    test_opacity: float | None = 1.0,
    drop_probability: float = 0.5,
    conservatism: float = 0.5,
    keep_patches: int | None = None,
    seed: int = 0,
) -> Attack:
    """Builds the Adaptive-Patch attack.

    Args:
        target: class the backdoor maps triggered inputs to (a non-negative int; the range
            [0, C) is checked where C is known, in `poison_dataset`).
        num_patches: k, the number of patch pieces (a positive int).
        patch_size: side `p` of each (p×p) patch, or `(height, width)`.
        opacity: opacity in (0, 1] of the training patches: x' = round((1 − o)·x + o·P)
            inside a kept patch, x elsewhere.
        test_opacity: opacity in (0, 1] of the test-time patches; None uses `opacity`.
        drop_probability: probability in [0, 1) that a patch is left out of a poisoned
            training image, independently per patch and image.
        conservatism: probability in [0, 1) that a poisoned training image is a
            regularization sample, which keeps its true label; the others get `target`.
        keep_patches: None for independent dropping, or an int m in [1, k]: every poisoned
            training image gets exactly m patches chosen uniformly (`drop_probability` is
            then unused); m=1 is the reference implementation's rule.
        seed: seed of the patch contents and positions.

    Returns:
        An `Attack`. `train_fn` stamps a random subset of the patches on each image (per-image
        randomness from the key; works batched and under `vmap` over per-example keys) and
        relabels all but the regularization samples to `target`. `test_fn` is deterministic:
        all patches at `test_opacity`, labels `target`. Images are `uint8[..., H, W, 3]` of
        any leading batch shape and size; the k patches must fit in the image without
        overlapping (checked at trace time).

    Raises:
        ValueError: for a hyper-parameter outside the ranges above.
    """
    name = "adaptive_patch"
    target = check_target(name, target)
    num_patches = check_positive_int(name, "num_patches", num_patches)
    patch_h, patch_w = _parse_size(name, patch_size)
    opacity = check_opacity(name, "opacity", opacity)
    test_opacity = (
        opacity if test_opacity is None else check_opacity(name, "test_opacity", test_opacity)
    )
    drop_probability = check_probability(name, "drop_probability", drop_probability)
    conservatism = check_probability(name, "conservatism", conservatism)
    if keep_patches is not None and (
        not is_int(keep_patches) or not 1 <= keep_patches <= num_patches
    ):
        raise ValueError(
            f"{name}: keep_patches must be None or an int in [1, {num_patches}] (num_patches), "
            f"got {keep_patches!r}"
        )
    keep_patches = None if keep_patches is None else int(keep_patches)
    seed = check_seed(name, seed)

    def stamp(images, mask, opacity_):
        """Blends the trigger image into `images` where `mask` ([..., H, W, 1]) is True."""
        _, trigger = patch_layout(*images.shape[-3:-1], num_patches, (patch_h, patch_w), seed)
        return jnp.where(mask, blend(images, trigger, opacity_), images)

    def train_fn(key, images, labels):
        images, labels = check_inputs(name, images, labels)
        height, width = images.shape[-3:-1]
        ids, _ = patch_layout(height, width, num_patches, (patch_h, patch_w), seed)
        piece_key, label_key = jax.random.split(key)
        batch_shape = images.shape[:-3]
        kept = sample_kept_pieces(
            piece_key, batch_shape, num_patches, drop_probability, keep_patches
        )
        # Background pixels carry id k: append a never-kept entry so one gather with the
        # static id map gives every pixel's mask, for any batch shape.
        kept = jnp.concatenate([kept, jnp.zeros((*batch_shape, 1), bool)], axis=-1)
        mask = jnp.take(kept, ids, axis=-1)[..., None]
        triggered = stamp(images, mask, opacity)
        return triggered, regularized_labels(label_key, labels, target, conservatism)

    def test_fn(key, images, labels):
        del key  # deterministic
        images, labels = check_inputs(name, images, labels)
        ids, _ = patch_layout(*images.shape[-3:-1], num_patches, (patch_h, patch_w), seed)
        mask = jnp.asarray((ids < num_patches)[..., None])
        return stamp(images, mask, test_opacity), jnp.full_like(labels, target)

    return Attack(
        name=name,
        target=target,
        train_fn=train_fn,
        test_fn=test_fn,
        params=(
            ("num_patches", num_patches),
            ("patch_size", (patch_h, patch_w)),
            ("opacity", opacity),
            ("test_opacity", test_opacity),
            ("drop_probability", drop_probability),
            ("conservatism", conservatism),
            ("keep_patches", keep_patches),
            ("seed", seed),
        ),
    )


def patch_layout(
    height: int, width: int, num_patches: int, patch_size: tuple[int, int], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Where the k patches go in an H×W image and what they look like, from the seed.

    Patch contents come first from `np.random.default_rng(seed)` (so they do not depend on
    the image size): each pixel of each patch gets channels in {0, 255}. Then patch i's
    top-left corner is drawn uniformly among the corners that keep it inside the image and
    off patches 0..i-1. Results are cached and read-only.

    Args:
        height: H.
        width: W.
        num_patches: k.
        patch_size: `(height, width)` of every patch.
        seed: non-negative int.

    Returns:
        `(ids, trigger)`: ids int32[H, W], the patch each pixel belongs to (k for pixels
        outside every patch); trigger float32[H, W, 3], the patch colours (0 outside).

    Raises:
        ValueError: when the patches cannot all be placed without overlapping.
    """
    return _cached_layout(int(height), int(width), int(num_patches), tuple(patch_size), int(seed))


@functools.lru_cache(maxsize=64)
def _cached_layout(height, width, num_patches, patch_size, seed):
    patch_h, patch_w = patch_size
    rng = np.random.default_rng(seed)
    contents = rng.integers(0, 2, size=(num_patches, patch_h, patch_w, 3)) * 255.0
    if patch_h > height or patch_w > width:
        raise ValueError(
            f"adaptive_patch: a {patch_h}×{patch_w} patch does not fit in {height}×{width} images"
        )
    # free[r, c]: a patch with top-left corner (r, c) would overlap none placed so far.
    free = np.ones((height - patch_h + 1, width - patch_w + 1), bool)
    ids = np.full((height, width), num_patches, np.int32)
    trigger = np.zeros((height, width, 3), np.float32)
    for i in range(num_patches):
        candidates = np.flatnonzero(free)
        if candidates.size == 0:
            raise ValueError(
                f"adaptive_patch: {num_patches} patches of {patch_h}×{patch_w} pixels do not fit "
                f"in {height}×{width} images without overlapping (only {i} could be placed); "
                f"use fewer or smaller patches"
            )
        row, col = np.unravel_index(rng.choice(candidates), free.shape)
        ids[row : row + patch_h, col : col + patch_w] = i
        trigger[row : row + patch_h, col : col + patch_w] = contents[i]
        # Corners within (patch_h - 1, patch_w - 1) of this one would overlap it.
        free[
            max(0, row - patch_h + 1) : row + patch_h, max(0, col - patch_w + 1) : col + patch_w
        ] = False
    ids.setflags(write=False)
    trigger.setflags(write=False)
    return ids, trigger


def _parse_size(attack: str, size) -> tuple[int, int]:
    if is_int(size):
        pair = (size, size)
    else:
        pair = tuple(size) if isinstance(size, Sequence | np.ndarray) else ()
    if len(pair) != 2 or not all(is_int(s) and s > 0 for s in pair):
        raise ValueError(
            f"{attack}: patch_size must be a positive int or (height, width), got {size!r}"
        )
    return int(pair[0]), int(pair[1])
