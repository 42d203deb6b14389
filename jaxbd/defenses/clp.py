"""CLP: data-free pruning of the channels with an outlying channel Lipschitz bound.

Zheng, Zhang, Wang, Zhang and Chen 2022 ("Data-free backdoor removal based on channel
Lipschitzness"): a backdoor is carried by a few channels unusually sensitive to their input.
For a conv filter k followed by its own BatchNorm (scale γ_k, running variance var_k), the
channel's upper-bound Lipschitz constant is UCLC_k = σ_max(W_k) · |γ_k| / sqrt(var_k + ε)
(`uclc`, W_k the filter as a C_in × (kh·kw) matrix). Per layer, the channels with
UCLC_k > mean + u · std (unbiased) of that layer's UCLCs are pruned (u = 3, the paper's
default); no fine-tuning follows. Each conv is scored with its own BatchNorm, found from the
data flow (`jaxbd.prune.channels.conv_bn_pairs`); convs without one are never pruned.

Data-free: the plan reads the parameters and BatchNorm statistics only. The `u` curve is
reported alongside, with validation accuracies when the defender has held-out images. How
the pairing and the pruning differ from the reference code is in docs/defenses.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.defenses.base import Candidates, RepairContext, TuningPlan, Variables
from jaxbd.prune.channels import ConvBN, conv_bn_pairs, filter_mask, module_params
from jaxbd.prune.masks import apply_mask, check_mask
from jaxbd.settings import require
from jaxbd.types import PyTree

U_GRID = tuple(float(u) for u in np.arange(0.0, 10.0 + 1e-9, 0.5))
"""The curve's default grid: u = 0, 0.5, ..., 10."""

# TuningPlan needs a learning rate, but CLP's plan has 0 steps: the tuning loop builds its
# schedule from this value and never steps.
_UNUSED_LR = 1e-3

# The trace that finds the conv → BatchNorm map needs an input; with no defender images to
# take the shape from, CIFAR's. The map of a fully convolutional model does not depend on it.
_DEFAULT_IMAGE_SHAPE = (32, 32, 3)


def uclc(kernel: jax.Array, scale: jax.Array, var: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Upper bound of each output channel's Lipschitz constant (conv followed by its BN).

    Args:
        kernel: f32[kh, kw, C_in, C_out] the conv's kernel (flax layout; C_in per group for
            grouped convs).
        scale: f32[C_out] the BatchNorm's γ.
        var: f32[C_out] its running variance.
        eps: its ε.

    Returns:
        f32[C_out]: σ_max(W_k as C_in × (kh·kw)) · |γ_k| / sqrt(var_k + ε).
    """
    kernel = jnp.asarray(kernel, jnp.float32)
    kh, kw, c_in, c_out = kernel.shape
    # PyTorch's weight[k] is [C_in, kh, kw]; rows = input channels, columns = positions.
    w = jnp.transpose(kernel, (3, 2, 0, 1)).reshape(c_out, c_in, kh * kw)
    sigma = jnp.linalg.svd(w, compute_uv=False)[:, 0]  # singular values come sorted, largest first
    bn = jnp.abs(jnp.asarray(scale, jnp.float32)) / jnp.sqrt(jnp.asarray(var, jnp.float32) + eps)
    return sigma * bn


def clp_scores(
    params: PyTree, batch_stats: PyTree, pairs: Sequence[ConvBN]
) -> dict[str, np.ndarray]:
    """UCLC of every conv that has its own BatchNorm.

    Args:
        params: the model's parameters (apply any pruning mask first).
        batch_stats: its BatchNorm statistics ("var" per BN).
        pairs: the conv → BatchNorm map (`conv_bn_pairs`).

    Returns:
        conv name ("/"-joined path) -> f32[C_out] UCLC, in call order; convs without an own
        BatchNorm are absent.
    """
    scores = {}
    for pair in pairs:
        if pair.bn is None:
            continue
        kernel = module_params(params, pair.conv)["kernel"]
        bn = module_params(params, pair.bn)
        var = module_params(batch_stats, pair.bn)["var"]
        scores[pair.name] = np.asarray(jax.device_get(uclc(kernel, bn["scale"], var, pair.epsilon)))
    return scores


def outlier_channels(scores: np.ndarray, u: float) -> np.ndarray:
    """The channels of one layer whose UCLC exceeds mean + u · std (unbiased std).

    Args:
        scores: f32[C_out] one layer's UCLC.
        u: the threshold in standard deviations.

    Returns:
        int32[K] sorted channel indices (none for a layer of one channel: no std).
    """
    scores = np.asarray(scores, np.float64)
    if scores.size < 2:
        return np.zeros((0,), np.int32)
    threshold = scores.mean() + u * scores.std(ddof=1)
    return np.flatnonzero(scores > threshold).astype(np.int32)


def clp_select(scores: Mapping[str, np.ndarray], u: float) -> dict[str, np.ndarray]:
    """Per layer, the channels CLP prunes at `u`: conv name -> int32[K] (every scored layer
    present, possibly empty)."""
    return {name: outlier_channels(s, u) for name, s in scores.items()}


def clp_curve(
    params: PyTree,
    batch_stats: PyTree,
    pairs: Sequence[ConvBN],
    us: Sequence[float] = U_GRID,
    *,
    validate: Callable[[PyTree, PyTree], float] | None = None,
) -> list[dict[str, Any]]:
    """How much CLP prunes (and, with `validate`, what it costs) as u varies.

    Args:
        params: the model's parameters (any pruning mask applied).
        batch_stats: its BatchNorm statistics.
        pairs: the conv → BatchNorm map.
        us: the thresholds (default 0, 0.5, ..., 10).
        validate: optional `validate(params, batch_stats) -> accuracy` on the defender's
            validation images (never test data), evaluated on each pruned model.

    Returns:
        One row per u: {"u", "num_pruned"} and "val_accuracy" when `validate` is given.
    """
    scores = clp_scores(params, batch_stats, pairs)
    rows = []
    for u in us:
        chosen = clp_select(scores, float(u))
        row = {"u": float(u), "num_pruned": int(sum(c.size for c in chosen.values()))}
        if validate is not None:
            pruned = apply_mask(params, filter_mask(params, pairs, chosen))
            row["val_accuracy"] = float(validate(pruned, batch_stats))
        rows.append(row)
    return rows


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLP:
    """CLP (Zheng et al. 2022): data-free pruning of channels with outlying UCLC.

    The plan's `details`: "u"; "num_channels_pruned" and "num_channels" (over the scored
    convs); "pruning_rate"; "pruned_per_layer" (conv name -> count); "layers" (conv name ->
    "bn" (its own BatchNorm), "num_channels", "channels_pruned" (sorted), "threshold"
    (mean + u·std; None for a one-channel layer), "max_uclc"); "unscored_convs" (convs with
    no own BatchNorm, never pruned); "curve" (per u of `curve_us`: "u", "num_pruned", and
    "val_accuracy" when the defender has validation images).

    Attributes:
        u: prune a layer's channels whose UCLC exceeds its mean + u · std (paper: 3).
        curve_us: the u grid of the curve reported alongside (default 0, 0.5, ..., 10).
        steps: must be 0 (CLP does not fine-tune; the field exists so a common
            `defense.steps` override fails with a clear message).
        momentum: unused by CLP (no tuning); part of every repair's fields.
        weight_decay: unused by CLP (no tuning).
        batch_size: the engine's batch size (CLP trains nothing; inference only).

    Raises:
        InvalidSettingError: for a value out of range.
    """

    # A data-free repair: the pipeline may run it with no defender images (r = 0).
    data_free: ClassVar[bool] = True

    u: float = 3.0
    curve_us: tuple[float, ...] = U_GRID
    steps: int = 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    name: ClassVar[str] = "clp"
    # It scores and prunes conv filters through their own BatchNorm.
    model_needs: ClassVar[tuple[str, ...]] = ("conv_bn",)

    def __post_init__(self):
        require(0 <= self.u < float("inf"), "u", "must be a finite number >= 0", self.u)
        require(
            len(self.curve_us) > 0 and all(0 <= u < float("inf") for u in self.curve_us),
            "curve_us",
            "must be a non-empty sequence of finite numbers >= 0",
            self.curve_us,
        )
        require(
            self.steps == 0,
            "steps",
            "must be 0: CLP is data-free and does not fine-tune",
            self.steps,
        )
        require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)", self.momentum)
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0", self.weight_decay)
        require(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)

    def plan(self, ctx: RepairContext, variables: Variables) -> TuningPlan:
        """Scores every conv channel with its own BatchNorm, prunes the outliers at `u`.

        Args:
            ctx: the repair context; only its model (`ctx.trainer.model`) is needed, plus
                the defender's validation images for the curve's accuracies if there are
                any (the pruning itself reads no data).
            variables: the backdoored model (its mask, if any, is kept and combined).

        Returns:
            The plan: the pruned model, 0 steps, and `details` (see the class docstring).
        """
        check_mask(variables.params, variables.mask)
        params = apply_mask(variables.params, variables.mask)
        batch_stats = variables.batch_stats
        pairs = conv_bn_pairs(ctx.trainer.model, params, _image_shape(ctx))

        scores = clp_scores(params, batch_stats, pairs)
        chosen = clp_select(scores, self.u)
        channel_mask = filter_mask(params, pairs, chosen)
        mask = jax.tree.map(
            lambda m, c: jnp.asarray(m, jnp.float32) * c, variables.mask, channel_mask
        )
        pruned = Variables(params=apply_mask(params, mask), batch_stats=batch_stats, mask=mask)

        by_name = {p.name: p for p in pairs}
        layers = {}
        for name, s in scores.items():
            s64 = np.asarray(s, np.float64)
            layers[name] = {
                "bn": "/".join(by_name[name].bn),
                "num_channels": int(s.size),
                "channels_pruned": chosen[name].tolist(),
                "threshold": float(s64.mean() + self.u * s64.std(ddof=1)) if s.size > 1 else None,
                "max_uclc": float(s64.max()),
            }
        num_pruned = int(sum(c.size for c in chosen.values()))
        num_channels = int(sum(s.size for s in scores.values()))
        validate = ctx.validate if _has_validation(ctx) else None
        details = {
            "u": self.u,
            "num_channels_pruned": num_pruned,
            "num_channels": num_channels,
            "pruning_rate": num_pruned / num_channels if num_channels else 0.0,
            "pruned_per_layer": {name: len(v["channels_pruned"]) for name, v in layers.items()},
            "layers": layers,
            "unscored_convs": [p.name for p in pairs if p.bn is None],
            "curve": clp_curve(params, batch_stats, pairs, self.curve_us, validate=validate),
        }

        def build(i: int) -> Variables:
            """The model CLP returns at u = curve_us[i]."""
            at_u = filter_mask(params, pairs, clp_select(scores, float(self.curve_us[i])))
            m = jax.tree.map(lambda a, c: jnp.asarray(a, jnp.float32) * c, variables.mask, at_u)
            return Variables(params=apply_mask(params, m), batch_stats=batch_stats, mask=m)

        return TuningPlan(
            variables=pruned,
            data=ctx.tune_data,
            steps=0,
            lr=_UNUSED_LR,
            details=details,
            candidates=Candidates(labels=tuple(details["curve"]), build=build),
        )


def _has_validation(ctx: RepairContext) -> bool:
    defender = getattr(ctx, "defender", None)
    val = getattr(defender, "val", None)
    return ctx.validate is not None and val is not None and len(val) > 0


def _image_shape(ctx: RepairContext) -> tuple[int, ...]:
    defender = getattr(ctx, "defender", None)
    for part in ("tune", "val"):
        data = getattr(defender, part, None)
        if data is not None and len(data) > 0:
            return tuple(np.shape(data.images)[1:])
    return _DEFAULT_IMAGE_SHAPE
