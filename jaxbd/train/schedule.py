"""Learning-rate schedules held as data.

A schedule is a small pytree of float32 scalars stored in the train state, not a Python
closure baked into the compiled step: a new phase (IMP round, fine-tuning, a shorter or longer
run) gets a new schedule without recompiling `train_step`.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class CosineSchedule:
    """Optional linear warm-up, then cosine decay per step from `peak` to `end`.

    lr(t) = peak · t / warmup                                         for t < warmup
    lr(t) = end + (peak − end) · ½(1 + cos(π · min(t − warmup, T) / T)) otherwise,
    where T = total − warmup. Warm-up starts from 0 like optax's warmup schedules.

    Attributes:
        peak: float32 scalar, the learning rate after warm-up.
        end: float32 scalar, the floor reached at step `total`.
        warmup: float32 scalar, warm-up steps (0 for none).
        total: float32 scalar, steps until the floor (warm-up included).
    """

    peak: jax.Array
    end: jax.Array
    warmup: jax.Array
    total: jax.Array

    @classmethod
    def create(cls, peak: float, total_steps: int, *, end: float = 0.0, warmup_steps: int = 0):
        """Builds a schedule; validates the arguments on the host."""
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}"
            )
        if peak <= 0 or end < 0 or end > peak:
            raise ValueError(f"need 0 <= end <= peak and peak > 0, got peak={peak}, end={end}")
        f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        return cls(f32(peak), f32(end), f32(warmup_steps), f32(total_steps))

    def __call__(self, step: jax.Array) -> jax.Array:
        """float32 learning rate at integer `step` (0-based, steps already taken)."""
        t = jnp.asarray(step, jnp.float32)
        warm = self.peak * t / jnp.maximum(self.warmup, 1.0)
        span = jnp.maximum(self.total - self.warmup, 1.0)
        progress = jnp.clip((t - self.warmup) / span, 0.0, 1.0)
        cosine = self.end + (self.peak - self.end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(t < self.warmup, warm, cosine)
