"""Poisoning a training set and triggering a test set with an `Attack`.

Both run the attack on the accelerator in fixed-size batches (one compilation per attack and
image shape) and return new host arrays; the input dataset is never modified. Every output is
indexed by the canonical example index, so poison flags and original labels line up with
selection scores, forgetting counts and selected indices downstream.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from jaxbd.attacks.base import Attack, AttackFn
from jaxbd.data.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class PoisonedDataset:
    """A training set after poisoning, with the ground truth about what was poisoned.

    Not every poison is a backdoor sample. `is_poison` flags every example the attack's
    training transform touched; `is_backdoor` flags those that pair the trigger with the
    attacker's label, the examples that teach the backdoor:

    - dirty-label attacks: the poisons whose label the transform changed (to the target, or
      to (y + 1) mod C for all-to-all). Poisons that keep their label are not backdoor
      samples: WaNet's noise-mode samples, Adaptive-Blend's and Adaptive-Patch's
      regularization samples, and target-class images drawn as candidates when
      `exclude_target=False` (stamped, but their label was already the target);
    - clean-label attacks: every poison (all are target-class images, and a clean-label
      training transform stamps its trigger on every target-class image it is given).

    Attributes:
        dataset: the poisoned training set: images with triggers stamped on the poisons and
            the labels a learner observes (flipped to the target for dirty-label attacks).
        is_poison: bool[N], True where the example was poisoned.
        original_labels: int32[N], the labels before poisoning.
        poison_indices: int32[P], the poisoned indices in increasing order
            (`np.flatnonzero(is_poison)`).
        target: the attack's target class.
        is_backdoor: bool[N], True for the backdoor samples among the poisons (see above);
            `is_backdoor <= is_poison`. Defaults to `is_poison` (every poison a backdoor
            sample) when not given.
    """

    dataset: Dataset
    is_poison: np.ndarray
    original_labels: np.ndarray
    poison_indices: np.ndarray
    target: int
    is_backdoor: np.ndarray | None = None

    def __post_init__(self):
        is_poison = np.asarray(self.is_poison, bool)
        if self.is_backdoor is None:
            # frozen: set the default through object.__setattr__, as dataclasses do.
            object.__setattr__(self, "is_backdoor", is_poison.copy())
        is_backdoor = np.asarray(self.is_backdoor)
        if is_backdoor.dtype != bool or is_backdoor.shape != is_poison.shape:
            raise ValueError(
                f"is_backdoor must be bool{list(is_poison.shape)} like is_poison, got "
                f"{is_backdoor.dtype}{list(is_backdoor.shape)}"
            )
        if np.any(is_backdoor & ~is_poison):
            raise ValueError("is_backdoor flags examples that are not poisons")


@dataclasses.dataclass(frozen=True)
class TriggeredTestSet:
    """Every test image with the test-time trigger applied.

    Attributes:
        images: uint8[M, H, W, 3] triggered images.
        labels: int32[M], the labels the attacker wants predicted (the target class for
            BadNets, (y + 1) mod C for all-to-all).
        true_labels: int32[M], the clean labels.
        eligible: bool[M], `labels != true_labels`: the images that count towards ASR and
            robust accuracy. For a single-target attack this excludes the target class:
            counting it, as some studies do, puts a floor of about 1/C under the ASR, since
            a clean model already predicts the target for those images. For all-to-all
            every image is eligible.
    """

    images: np.ndarray
    labels: np.ndarray
    true_labels: np.ndarray
    eligible: np.ndarray


def poison_dataset(
    key: jax.Array,
    dataset: Dataset,
    attack: Attack,
    *,
    fraction: float,
    exclude_target: bool = False,
    batch_size: int = 4096,
) -> PoisonedDataset:
    """Poisons a random fraction of a training set with `attack.train_fn`.

    Candidates are all examples (the usual BadNets setting: the target class can be poisoned
    too, which changes nothing visible but the trigger), or with `exclude_target`
    only examples whose label is not the target. The number of poisons is
    `round(fraction * number of candidates)` (Python rounding: nearest, ties to even). For a
    clean-label attack (`attack.clean_label`) the candidates are the target-class images,
    `fraction` is of the whole training set, and the original labels are kept whatever
    `train_fn` returns.

    Poisons are drawn uniformly without replacement from `key`, which should be a stream of
    its own (e.g. `jaxbd.rng.stream(seed, "poison")`) so no other random choice, such as a
    random-subset baseline, can correlate with it.

    Args:
        key: PRNG key for the index draw and the attack's own randomness.
        dataset: the clean training set.
        attack: the attack to apply.
        fraction: in [0, 1], see above.
        exclude_target: never poison images already labelled with the target (dirty-label
            attacks only).
        batch_size: images per call of the attack; the last batch is padded so the attack
            compiles once.

    Returns:
        The poisoned dataset with its poison flags, original labels, poison indices and
        backdoor-sample flags (`PoisonedDataset.is_backdoor`).

    Raises:
        ValueError: for a fraction outside [0, 1], a target outside [0, C), a clean-label
            attack asked for more poisons than there are target-class images, or
            `exclude_target` with a clean-label attack.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a jaxbd Dataset, got {type(dataset).__name__}")
    _check_fraction(fraction)
    _check_batch_size(batch_size)
    target = attack.target
    if not 0 <= target < dataset.num_classes:
        raise ValueError(
            f"attack target {target} is outside [0, {dataset.num_classes}) for this dataset"
        )
    labels = dataset.labels
    n = len(dataset)
    if attack.clean_label:
        if exclude_target:
            raise ValueError(
                f"exclude_target=True leaves nothing to poison: {attack.name} is a clean-label "
                f"attack, which only poisons target-class images"
            )
        candidates = np.flatnonzero(labels == target)
        num_poison = round(fraction * n)
        if num_poison > candidates.size:
            raise ValueError(
                f"{attack.name} is a clean-label attack: fraction={fraction} of {n} examples asks "
                f"for {num_poison} poisons, but class {target} has only {candidates.size} images "
                f"(at most fraction={candidates.size / n:.4g})"
            )
    else:
        candidates = np.flatnonzero(labels != target) if exclude_target else np.arange(n)
        num_poison = round(fraction * candidates.size)

    choice_key, attack_key = jax.random.split(key)
    if num_poison:
        chosen = jax.random.choice(choice_key, candidates.size, (num_poison,), replace=False)
        poison_indices = np.sort(candidates[np.asarray(chosen)]).astype(np.int32)
    else:
        poison_indices = np.zeros((0,), np.int32)

    poisoned_images, poisoned_labels = _apply_in_batches(
        attack.train_fn,
        attack_key,
        dataset.images[poison_indices],
        labels[poison_indices],
        batch_size,
    )
    images = dataset.images.copy()
    images[poison_indices] = poisoned_images
    new_labels = labels.copy()
    if not attack.clean_label:
        new_labels[poison_indices] = poisoned_labels
    is_poison = np.zeros((n,), bool)
    is_poison[poison_indices] = True
    # Which poisons teach the backdoor (see PoisonedDataset): for a clean-label attack every
    # poison (target-class images, all stamped); otherwise those whose label was changed.
    is_backdoor = is_poison.copy() if attack.clean_label else is_poison & (new_labels != labels)

    description = f"poisoned: {attack.description}, fraction={fraction}, {num_poison} poisons" + (
        ", target class excluded" if exclude_target else ""
    )
    poisoned = Dataset(
        images=images,
        labels=new_labels,
        num_classes=dataset.num_classes,
        class_names=dataset.class_names,
        source=f"{dataset.source} | {description}",
    )
    return PoisonedDataset(
        dataset=poisoned,
        is_poison=is_poison,
        original_labels=labels.copy(),
        poison_indices=poison_indices,
        target=target,
        is_backdoor=is_backdoor,
    )


def triggered_test_set(
    key: jax.Array, test: Dataset, attack: Attack, *, batch_size: int = 4096
) -> TriggeredTestSet:
    """Applies `attack.test_fn` to every test image.

    Args:
        key: PRNG key for the attack's randomness (e.g. random trigger positions).
        test: the clean test set.
        attack: the attack.
        batch_size: images per call of the attack (last batch padded; one compilation).

    Returns:
        The triggered images, the attacker's labels, the true labels and the ASR mask.
    """
    if not isinstance(test, Dataset):
        raise TypeError(f"test must be a jaxbd Dataset, got {type(test).__name__}")
    _check_batch_size(batch_size)
    images, labels = _apply_in_batches(attack.test_fn, key, test.images, test.labels, batch_size)
    true_labels = test.labels.copy()
    return TriggeredTestSet(
        images=images, labels=labels, true_labels=true_labels, eligible=labels != true_labels
    )


def _apply_in_batches(
    fn: AttackFn, key: jax.Array, images: np.ndarray, labels: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Runs `fn` over `images` in equal-size batches; returns host uint8[n, ...], int32[n].

    Batch b gets `fold_in(key, b)`, so results depend only on the key and the batch size. The
    batch is shrunk to n when n is smaller (no point transforming 4,000 padding images for a
    few poisons), and the last batch is padded with zeros, so there is one compilation per
    call shape; repeated calls with the same function and shapes reuse it.
    """
    n = images.shape[0]
    if n == 0:
        return images.copy(), labels.astype(np.int32, copy=True)
    batch = min(batch_size, n)
    num_batches = math.ceil(n / batch)
    jitted = jax.jit(fn)
    result_images = np.empty_like(images)
    result_labels = np.empty((n,), np.int32)

    def fetch(b, outputs):
        # Cut the padding on the host, so no slice of a new shape is compiled on the device.
        out_images, out_labels = jax.device_get(outputs)
        if out_images.dtype != np.uint8 or out_images.shape != (batch, *images.shape[1:]):
            raise ValueError(
                f"{getattr(fn, '__name__', 'the attack')} returned images of dtype "
                f"{out_images.dtype} and shape {out_images.shape}; expected uint8 "
                f"{(batch, *images.shape[1:])}"
            )
        stop = min((b + 1) * batch, n)
        result_images[b * batch : stop] = out_images[: stop - b * batch]
        result_labels[b * batch : stop] = out_labels[: stop - b * batch]

    pending = None
    for b in range(num_batches):
        x = images[b * batch : (b + 1) * batch]
        y = labels[b * batch : (b + 1) * batch]
        if x.shape[0] < batch:
            pad = batch - x.shape[0]
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros((pad,), y.dtype)])
        outputs = jitted(jax.random.fold_in(key, b), x, y)
        # Copy the previous batch to the host while this one runs (dispatch is async), so
        # at most two batches are ever held on the device.
        if pending is not None:
            fetch(*pending)
        pending = (b, outputs)
    fetch(*pending)
    return result_images, result_labels


def _check_fraction(fraction) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, int | float | np.floating):
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    if not 0.0 <= fraction <= 1.0:  # also rejects NaN
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
