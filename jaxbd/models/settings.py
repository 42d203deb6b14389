"""The `config.model` section as settings: which network, how wide, in which precision."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxbd.settings import require

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
"""Compute dtypes by config name ("auto" chooses one per backend, see `resolve_dtype`)."""


def resolve_dtype(name: str) -> jnp.dtype:
    """The compute dtype: "auto" is bfloat16 on accelerators and float32 on the CPU, where
    bf16 convolutions are emulated and slower."""
    if name == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return DTYPES[name]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """The network.

    Attributes:
        name: a key of `jaxbd.models.MODELS`.
        width: channels of the first stage (64: the standard ResNet-18).
        dtype: compute dtype, "float32", "bfloat16" or "auto" (parameters and BatchNorm
            statistics are float32 either way).
    """

    name: str = "resnet18"
    width: int = 64
    dtype: str = "auto"

    def __post_init__(self):
        from jaxbd.models import MODELS  # the registry imports the model modules

        require(self.name in MODELS, "name", f"must be one of {sorted(MODELS)}", self.name)
        require(self.width >= 1, "width", "must be >= 1", self.width)
        choices = ["auto", *DTYPES]
        require(self.dtype in choices, "dtype", f"must be one of {choices}", self.dtype)

    def build(self, num_classes: int):
        """The flax module for `num_classes` classes."""
        from jaxbd.models import MODELS

        return MODELS[self.name](
            num_classes=num_classes, width=self.width, dtype=resolve_dtype(self.dtype)
        )
