"""The attack type: a named pair of pure, jittable image/label transforms.

Every attack in jaxbd is built by a factory (`badnets(size=7, ...)`, later `blended(...)`,
`wanet(...)`) that validates its hyper-parameters once and returns an `Attack`. The attack
itself holds no arrays and no state: its two functions are pure maps

    (key, images uint8[..., H, W, 3], labels int32[...]) -> (images uint8[..., H, W, 3],
                                                              labels int32[...])

one used when poisoning the training set, one when triggering the test set (they differ for
attacks such as Adaptive-Blend, whose training trigger drops random pieces, or WaNet, whose
training poisons include label-keeping noise samples). Transforms are written for any number
of leading batch dimensions, so `attack(key, images, labels)` works on a batch `[B, H, W, 3]`
and, under `jax.vmap` over per-example keys, on single images `[H, W, 3]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

AttackFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
"""`(key, images uint8[..., H, W, 3], labels int32[...]) -> (images, labels)`, same shapes."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attack:
    """A backdoor attack: how it poisons training images and how it triggers test images.

    Both functions must be pure and traceable (no Python branching on array values, no host
    callbacks), so they can run under `jax.jit`, `jax.vmap` and inside a training step.
    Randomness comes only from the key; deterministic attacks ignore it.

    Attributes:
        name: registry name, e.g. "badnets".
        target: the class the backdoor maps triggered inputs to. Attacks without a single
            target class (all-to-all: y -> (y + 1) mod C) document what they store here;
            per-example targets are always available as the labels `test_fn` returns.
        clean_label: True for attacks that poison only target-class images and keep their
            labels (SIG, clean-label BadNets, adversarial clean-label). `poison_dataset`
            then draws poisons from the target class alone.
        train_fn: the training-time transform (`AttackFn`), applied to the poisoned subset.
        test_fn: the test-time transform (`AttackFn`). Its labels are what the attacker
            wants predicted; ASR is measured against them.
        params: the factory's hyper-parameters as `(name, value)` pairs, recorded in the
            poisoned dataset's `source` and in run metadata. A tuple rather than a dict so
            an `Attack` stays hashable (usable as a static argument of `jax.jit`).
    """

    name: str
    target: int
    clean_label: bool = False
    train_fn: AttackFn
    test_fn: AttackFn
    params: tuple[tuple[str, Any], ...] = ()

    def __call__(
        self, key: jax.Array, images: jax.Array, labels: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Applies the training-time transform (`train_fn`).

        Args:
            key: PRNG key (typed or raw).
            images: uint8[..., H, W, 3].
            labels: int32[...], the leading shape of `images`.

        Returns:
            `(images, labels)` with the input shapes and dtypes.
        """
        return self.train_fn(key, images, labels)

    def apply_test(
        self, key: jax.Array, images: jax.Array, labels: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Applies the test-time transform (`test_fn`); arguments as for `__call__`."""
        return self.test_fn(key, images, labels)

    @property
    def description(self) -> str:
        """A one-line summary, e.g. "badnets(target=0, size=(7, 7), color=(255, 0, 0), ...)"."""
        args = ", ".join(f"{k}={v!r}" for k, v in (("target", self.target), *self.params))
        return f"{self.name}({args})"
