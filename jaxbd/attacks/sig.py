"""SIG (Barni, Kallas, Tondi 2019, "A new backdoor attack in CNNs by training set corruption
without label poisoning"): a clean-label attack with a horizontal sinusoidal signal.

    x'[i, j, c] = clip(round(x[i, j, c] + Δ·sin(2π·j·f / W)), 0, 255)

for every row i and channel c, where j is the column and W the image width. Only images of
the target class are poisoned and they keep their labels (`clean_label=True`, so
`poison_dataset` draws the poisons from the target class); the network learns to associate
the signal with the target class, and at test time the same signal added to an image of any
class triggers it.

As for every clean-label attack in jaxbd (`cl_badnets`, `adv_clean_label`), the training
transform changes only the target-class images of a batch and returns the others as given,
so applying it to a mixed batch (poisoning on the fly in a training step) can never make a
dirty-label poison.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxbd.attacks.base import Attack
from jaxbd.attacks.pixels import add_pattern, where_images
from jaxbd.attacks.validation import check_inputs, check_target, is_real


def sig(*, target: int = 0, amplitude: float = 20.0, frequency: float = 6.0) -> Attack:
    """Builds the SIG attack.

    Args:
        target: the target class, whose training images are poisoned (a non-negative int;
            the range [0, C) is checked where C is known, in `poison_dataset`).
        amplitude: Δ, the signal's peak in grey levels, in (0, 255]; the default 20 is the
            paper's.
        frequency: f, the number of periods across the image width (> 0); the default 6 is
            the paper's.
            Must be below W/2 (the Nyquist limit), checked at trace time: at W/2 or above
            the sampled sinusoid aliases to a lower frequency or vanishes.

    Returns:
        An `Attack` with `clean_label=True` whose transforms are deterministic (the key is
        ignored) and work on images `uint8[..., H, W, 3]` of any leading batch shape and
        size.

        - `train_fn(key, images, labels int32[...])` adds the signal to the images whose
          label is `target` and returns the others unchanged; labels are returned as given.
          `poison_dataset` passes target-class images only, so there every image gets the
          signal; the label test is the clean-label rule shared with `cl_badnets` and
          `adv_clean_label`.
        - `test_fn` adds the signal to every image and sets every label to `target`.

    Raises:
        ValueError: for a bad target, amplitude or frequency.
    """
    name = "sig"
    target = check_target(name, target)
    if not is_real(amplitude) or not 0 < amplitude <= 255:
        raise ValueError(f"{name}: amplitude must be a number in (0, 255], got {amplitude!r}")
    amplitude = float(amplitude)
    if not is_real(frequency) or frequency <= 0:
        raise ValueError(f"{name}: frequency must be a positive number, got {frequency!r}")
    frequency = float(frequency)

    def add_signal(images):
        width = images.shape[-2]
        if 2 * frequency >= width:
            raise ValueError(
                f"{name}: frequency={frequency} periods per row needs images wider than "
                f"{2 * frequency:g} pixels (Nyquist), got width {width}"
            )
        signal = sig_signal(width, amplitude, frequency)
        return add_pattern(images, signal)

    def train_fn(key, images, labels):
        del key  # deterministic
        images, labels = check_inputs(name, images, labels)
        # Clean label: a non-target image with the signal would be a dirty-label poison.
        return where_images(labels == target, add_signal(images), images), labels

    def test_fn(key, images, labels):
        del key  # deterministic
        images, labels = check_inputs(name, images, labels)
        return add_signal(images), jnp.full_like(labels, target)

    return Attack(
        name=name,
        target=target,
        clean_label=True,
        train_fn=train_fn,
        test_fn=test_fn,
        params=(("amplitude", amplitude), ("frequency", frequency)),
    )


def sig_signal(width: int, amplitude: float, frequency: float) -> np.ndarray:
    """float32[W, 1]: Δ·sin(2π·j·f/W) per column j, broadcasting over rows and channels."""
    columns = np.arange(width, dtype=np.float64)
    signal = amplitude * np.sin(2 * np.pi * columns * frequency / width)
    return signal.astype(np.float32)[:, None]
