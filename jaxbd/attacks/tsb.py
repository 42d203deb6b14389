"""Trigger-Scattering Backdoor (TSB; Lukas & Kerschbaum 2023, "Pick your poison:
undetectability versus robustness in data poisoning attacks").

TSB trades some of a patch backdoor's robustness for undetectability: instead of one trigger
the attacker uses k perceptually distinct small triggers. Each poisoned training image
carries only one of them, chosen at random, at a random position, so no single pattern is
repeated across many poisons (weakening defenses that look for one consistent trigger, such
as trigger inversion or spectral signatures); at test time an image carries all k at once,
whose combined effect activates the backdoor.

How the triggers are generated: `triggers`; the test-time layout: `tsb`; both, at length:
docs/attacks.md, "Trigger-Scattering Backdoor".
"""

from __future__ import annotations

import colorsys
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.attacks.base import Attack
from jaxbd.attacks.validation import check_inputs, check_positive_int, check_seed, check_target


def tsb(*, target: int = 0, num_triggers: int = 4, size: int = 3, seed: int = 0) -> Attack:
    """Builds the Trigger-Scattering Backdoor.

    Args:
        target: class every poisoned and triggered image is relabelled to (dirty-label).
        num_triggers: k ≥ 1, the number of distinct triggers.
        size: s ≥ 1, the side of each square trigger.
        seed: non-negative int; the triggers' colours and patterns (see `triggers`).

    Returns:
        An `Attack` on `uint8[..., H, W, 3]` images (any leading shape; H, W ≥ s):

        - `train_fn` stamps on each image one trigger, uniform over the k, at a uniform
          position that keeps it inside the image (independent per image, from the key);
        - `test_fn` stamps all k triggers in a random non-overlapping layout: the image is
          divided into a g×g grid of equal cells, g = ⌈√k⌉, and the k triggers go to k
          distinct cells chosen at random per image, each at a uniform random position
          inside its cell, so every trigger is fully visible. The cells must hold a
          trigger: `⌊H / g⌋ ≥ s` and `⌊W / g⌋ ≥ s`, checked at trace time.

        Both set every label to `target`.

    Raises:
        ValueError: for bad hyper-parameters (at build time), or triggers that do not fit
            the images (at trace time).
    """
    target = check_target("tsb", target)
    k = check_positive_int("tsb", "num_triggers", num_triggers)
    s = check_positive_int("tsb", "size", size)
    seed = check_seed("tsb", seed)
    patterns = triggers(k, s, seed)
    grid = math.ceil(math.sqrt(k))

    def train_fn(key, images, labels):
        images, labels = check_inputs("tsb", images, labels)
        height, width = images.shape[-3:-1]
        if s > height or s > width:
            raise ValueError(f"tsb: a {s}×{s} trigger does not fit in {height}×{width} images")
        batch_shape = images.shape[:-3]
        index_key, row_key, col_key = jax.random.split(key, 3)
        index = jax.random.randint(index_key, batch_shape, 0, k)
        row = jax.random.randint(row_key, batch_shape, 0, height - s + 1)
        col = jax.random.randint(col_key, batch_shape, 0, width - s + 1)
        out = _stamp(images, patterns, index, row, col)
        return out, jnp.full_like(labels, target)

    def test_fn(key, images, labels):
        images, labels = check_inputs("tsb", images, labels)
        height, width = images.shape[-3:-1]
        cell_h, cell_w = height // grid, width // grid
        if s > cell_h or s > cell_w:
            raise ValueError(
                f"tsb: {k} triggers of {s}×{s} do not fit in {height}×{width} images: the "
                f"test layout uses a {grid}×{grid} grid of {cell_h}×{cell_w} cells, each "
                f"must hold one trigger"
            )
        batch_shape = images.shape[:-3]
        cell_key, row_key, col_key = jax.random.split(key, 3)
        # A random permutation of the cells per image (argsort of uniforms works for any
        # batch shape); trigger i takes the i-th cell.
        cells = jnp.argsort(jax.random.uniform(cell_key, (*batch_shape, grid * grid)), axis=-1)
        row_jitter = jax.random.randint(row_key, (*batch_shape, k), 0, cell_h - s + 1)
        col_jitter = jax.random.randint(col_key, (*batch_shape, k), 0, cell_w - s + 1)
        out = images
        for i in range(k):
            row = (cells[..., i] // grid) * cell_h + row_jitter[..., i]
            col = (cells[..., i] % grid) * cell_w + col_jitter[..., i]
            index = jnp.full(batch_shape, i, jnp.int32)
            out = _stamp(out, patterns, index, row, col)
        return out, jnp.full_like(labels, target)

    return Attack(
        name="tsb",
        target=target,
        train_fn=train_fn,
        test_fn=test_fn,
        params=(("num_triggers", k), ("size", s), ("seed", seed)),
    )


def triggers(num_triggers: int, size: int, seed: int) -> np.ndarray:
    """The k TSB triggers for a seed, generated with NumPy when the attack is built.

    Trigger i is an s×s binary pattern painted in two colours, a fully saturated hue h_i and
    its RGB complement (the hue h_i + 1/2). The h_i are evenly spaced over half the colour
    wheel from a seeded random start, h_i = h_0 + i/(2k), so the 2k colours are as far apart
    as k allows (and distinct after rounding to uint8 for any practical k, up to hundreds);
    the patterns are drawn at random, each mixing both colours (for s ≥ 2) and, while
    enough exist, of distinct shapes (a pattern and its complement are one shape).

    Args:
        num_triggers: k.
        size: s.
        seed: NumPy seed.

    Returns:
        uint8[k, s, s, 3]. Every pixel has one channel at 0 and one at 255 (a saturated hue
        or its complement); no two triggers share a colour.
    """
    rng = np.random.default_rng(seed)
    start = rng.uniform()
    colors = []
    for i in range(num_triggers):
        rgb = colorsys.hsv_to_rgb((start + i / (2 * num_triggers)) % 1.0, 1.0, 1.0)
        fg = np.round(255 * np.array(rgb)).astype(np.uint8)
        colors.append((fg, 255 - fg))
    # Distinct shapes while there are enough of them: a pattern and its complement count as
    # one shape (2^(s²) − 2 patterns mix both colours, half as many shapes); past that,
    # repeats are allowed, the colours still tell the triggers apart.
    available = (2 ** (size * size) - 2) // 2
    shapes: set[bytes] = set()
    out = np.empty((num_triggers, size, size, 3), np.uint8)
    for i, (fg, bg) in enumerate(colors):
        if size == 1:  # a single pixel: the saturated hue alone
            bits = np.ones((1, 1), bool)
        else:
            while True:
                bits = rng.integers(0, 2, (size, size)).astype(bool)
                shape = (bits if bits[0, 0] else ~bits).tobytes()
                mixed = 0 < bits.sum() < size * size
                if mixed and (shape not in shapes or len(shapes) >= available):
                    break
            shapes.add(shape)
        out[i] = np.where(bits[..., None], fg, bg)
    return out


def _stamp(images, patterns, index, row, col):
    """Stamps `patterns[index]` with its top-left pixel at `(row, col)`, per image.

    Args:
        images: uint8[*batch, H, W, 3].
        patterns: uint8[k, s, s, 3].
        index, row, col: int[*batch], in-bounds.

    Returns:
        uint8[*batch, H, W, 3]. Comparing iotas with per-image corners and gathering from
        the small pattern table builds every image's trigger at once, with no scatter and
        no loop over examples, for any batch shape (including none, under vmap).
    """
    height, width = images.shape[-3:-1]
    s = patterns.shape[1]
    row, col, index = row[..., None, None], col[..., None, None], index[..., None, None]
    local_r = jnp.arange(height)[:, None] - row  # [*batch, H, 1]
    local_c = jnp.arange(width)[None, :] - col  # [*batch, 1, W]
    inside = (local_r >= 0) & (local_r < s) & (local_c >= 0) & (local_c < s)
    pixels = jnp.asarray(patterns)[index, jnp.clip(local_r, 0, s - 1), jnp.clip(local_c, 0, s - 1)]
    return jnp.where(inside[..., None], pixels, images)
