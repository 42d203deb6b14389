"""SGD with momentum and weight decay exactly as PyTorch's `torch.optim.SGD` applies them.

PyTorch adds `weight_decay · θ` to the gradient before the momentum buffer
(`b ← μ·b + g + λθ`, `θ ← θ − lr·b`), unlike decoupled (AdamW-style) decay. The learning rate
is applied outside the optax chain, by the train step, from the schedule held in the state.
"""

from __future__ import annotations

import optax


def sgd_direction(momentum: float = 0.9, weight_decay: float = 5e-4, nesterov: bool = False):
    """The optax transformation producing the un-scaled SGD step direction.

    Args:
        momentum: μ, PyTorch's momentum (no dampening).
        weight_decay: λ, L2 coefficient added to the gradient (applied to every parameter,
            as `SGD(model.parameters(), weight_decay=λ)` does).
        nesterov: Nesterov momentum, as PyTorch's `nesterov=True`.

    Returns:
        An `optax.GradientTransformation`; the caller updates θ ← θ − lr · direction.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if weight_decay < 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.trace(decay=momentum, nesterov=nesterov),
    )
