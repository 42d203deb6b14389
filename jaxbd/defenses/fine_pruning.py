"""Fine-Pruning: prune the penultimate channels clean data leaves dormant, then fine-tune.

Liu, Dolan-Gavitt and Garg 2018 ("Fine-Pruning: Defending Against Backdooring Attacks on Deep
Neural Networks"): a backdoor tends to live in channels of the last convolutional stage that
clean inputs barely activate. The defense ranks those channels by their mean activation over
the defender's tuning images (`channel_activations`, `dormant_order`), prunes them in
increasing order of activation while the validation accuracy holds, and fine-tunes the
pruned model with the pruned channels kept out.

The channels are the penultimate `features` a model returns; pruning channel d zeroes row d
of the dense head's kernel (`find_head`, `prune_channels_mask`) in the mask pytree, which
the engine keeps at exactly zero through the fine-tuning. Decisions read the defender's data
only (ranking: tuning images; stopping: validation accuracy). Why the head's input rows, the
defaults' provenance and two flaws of public implementations avoided: docs/defenses.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.defenses.base import RepairContext, TuningPlan, Variables
from jaxbd.defenses.curve import within_budget
from jaxbd.defenses.finetune import check_optimizer
from jaxbd.prune.masks import apply_mask, check_mask, path_name
from jaxbd.settings import require, require_int
from jaxbd.types import PyTree

# fold_in tag of the stream that picks the sampling images when the tuning set is larger than
# `batches` batches; `tune` uses tags 1 and 2 of the same key.
_SAMPLE_STREAM = 0x4650


def channel_activations(features: jax.Array) -> jax.Array:
    """Mean activation of each penultimate channel.

    Args:
        features: f32[N, D] the features a model returns for N clean images (for jaxbd's
            models: the pooled, post-ReLU last-stage output, the dense head's inputs).

    Returns:
        f32[D] the mean over the images (not its absolute value: on post-ReLU features the
        two agree, and a strongly negative channel is not dormant).

    Raises:
        ValueError: unless `features` is 2-D with at least one row.
    """
    features = jnp.asarray(features, jnp.float32)
    if features.ndim != 2 or features.shape[0] < 1:
        raise ValueError(f"features must be f32[N, D] with N >= 1, got shape {features.shape}")
    return jnp.mean(features, axis=0)


def dormant_order(activations: jax.Array | np.ndarray) -> np.ndarray:
    """Channels from the least to the most activated.

    Args:
        activations: f32[D] mean activations.

    Returns:
        int32[D] channel indices in increasing order of activation; ties in index order (a
        stable sort, so the ranking does not depend on the sort implementation).
    """
    return np.argsort(np.asarray(jax.device_get(activations)), kind="stable").astype(np.int32)


def find_head(params: PyTree, feature_dim: int | None = None, *, head: str | None = "head") -> str:
    """The dense head whose input rows are the penultimate channels.

    Args:
        params: the model's parameters.
        feature_dim: D, the features' width; when given the head's kernel must be [D, C].
        head: the head module's "/"-joined path in `params` ("head" for jaxbd's models), or
            None to find it structurally: the one dense kernel (a 2-D leaf named "kernel")
            whose first dimension is `feature_dim`.

    Returns:
        The head module's path (its kernel is `path + "/kernel"`).

    Raises:
        ValueError: if the named module has no 2-D kernel, its input width is not D, or
            (head=None) no dense kernel or more than one has input width D.
    """
    kernels = {
        path_name(path[:-1]): np.shape(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if path and path_name(path[-1:]) == "kernel" and np.ndim(leaf) == 2
    }
    found = ", ".join(f"{name} {list(shape)}" for name, shape in kernels.items()) or "none"
    if head is not None:
        if head not in kernels:
            raise ValueError(
                f"no dense head {head!r} in the parameters (dense kernels: {found}); pass "
                "head=<its path>, or head=None to find the dense layer whose input width is the "
                "feature dimension"
            )
        if feature_dim is not None and kernels[head][0] != feature_dim:
            raise ValueError(
                f"the head {head!r} has kernel {list(kernels[head])}, but the model's features "
                f"are {feature_dim}-dimensional: Fine-Pruning masks the head's input rows, which "
                "must be the features the model returns"
            )
        return head
    matches = [name for name, shape in kernels.items() if shape[0] == feature_dim]
    if len(matches) != 1:
        what = "no dense kernel" if not matches else f"{len(matches)} dense kernels"
        raise ValueError(
            f"{what} with input width {feature_dim} (the feature dimension) among the "
            f"parameters (dense kernels: {found}); pass head=<its path>"
        )
    return matches[0]


def prune_channels_mask(
    params: PyTree, channels: Sequence[int] | np.ndarray | jax.Array, *, head: str = "head"
) -> PyTree:
    """The mask that removes penultimate channels from the dense head.

    Args:
        params: the model's parameters; `params[head]["kernel"]` is f32[D, C].
        channels: int[K] the channels to prune, each in [0, D).
        head: the head module's "/"-joined path (see `find_head`).

    Returns:
        A float32 0/1 pytree like `params`: 0 on the head kernel's rows `channels` (all of
        their C outputs), 1 everywhere else (the head's bias included).

    Raises:
        ValueError: if there is no such head, or a channel is out of range.
    """
    head = find_head(params, head=head)
    channels = np.asarray(jax.device_get(channels), np.int64).reshape(-1)
    kernel_path = f"{head}/kernel"

    def leaf_mask(path, leaf):
        ones = np.ones(np.shape(leaf), np.float32)
        if path_name(path) == kernel_path:
            d = ones.shape[0]
            if channels.size and (channels.min() < 0 or channels.max() >= d):
                raise ValueError(f"channels must be in [0, {d}), got {channels.tolist()}")
            ones[channels] = 0.0
        return jnp.asarray(ones)

    return jax.tree_util.tree_map_with_path(leaf_mask, params)


def candidate_counts(num_channels: int, prune_step: float, max_rate: float) -> list[int]:
    """How many channels each pruning candidate removes, increasing.

    Candidate i prunes round(i · prune_step · D) channels, up to round(max_rate · D) (always
    itself a candidate, so the maximal rate is reachable when it is not a multiple of the
    step); counts that round to the same number appear once.

    Args:
        num_channels: D.
        prune_step: fraction of D added per candidate, in (0, 1].
        max_rate: the largest fraction pruned, in (0, 1).

    Returns:
        Strictly increasing counts in [1, D − 1] (empty when even the maximal rate rounds to
        0 channels).
    """
    top = min(_round_half_up(max_rate * num_channels), num_channels - 1)
    counts = []
    for i in range(1, math.ceil(max_rate / prune_step) + 2):
        k = min(_round_half_up(i * prune_step * num_channels), top)
        if k >= 1 and (not counts or k > counts[-1]):
            counts.append(k)
        if k >= top:
            break
    return counts


def _round_half_up(x: float) -> int:
    # Python's round() rounds halves to even (2.5 -> 2); a count should not depend on that.
    # The epsilon absorbs float error in products like 0.05 * 3 * 10.
    return math.floor(x + 0.5 + 1e-9)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinePruning:
    """Fine-Pruning (Liu et al. 2018): prune dormant penultimate channels, then fine-tune.

    The plan's `details`: "head" (its path), "num_channels" (D), "channels_pruned" (sorted
    indices), "num_channels_pruned" (k), "pruning_rate" (k / D), "sampled_images",
    "base_val_accuracy" (the unpruned model's), "candidates" (per candidate: "num_channels",
    "rate", "val_accuracy", "within_budget"; evaluation stops at the first outside the
    budget) and "stopped_by" ("delta_prune" or "max_rate").

    Attributes:
        steps: fine-tuning SGD steps after pruning (Pick your Poison: 1000).
        lr: fine-tuning learning rate (Pick your Poison: 1e-3).
        momentum: SGD momentum.
        weight_decay: L2 coefficient added to the gradient (BackdoorBench's 5e-4).
        batch_size: images per step, and per sampling batch.
        cosine: decay the learning rate to 0 over the steps.
        batches: sampling batches of `batch_size` tuning images the ranking averages over
            (Pick your Poison: 10); all tuning images when there are fewer.
        prune_step: fraction of the D channels added per pruning candidate. The paper prunes
            one channel at a time; 5% is the coarse end of the usual 1–5%, chosen because
            each candidate costs one validation pass and with r = 1% the validation part
            (50 CIFAR-10 images) resolves accuracy only in steps of 2% anyway.
        max_rate: the largest fraction of channels pruned (Pick your Poison: 0.96).
        delta_prune: pruning stops once validation accuracy falls more than this (absolute)
            below the unpruned model's; the last candidate within it is kept (jaxbd's
            default; Liu et al. stop at a pre-set validation accuracy drop, Pick your Poison
            prunes `max_rate` unconditionally).
        head: the dense head's path in the parameters ("head" for jaxbd's models), or None
            to find the one dense layer whose input width is the feature dimension.

    Raises:
        InvalidSettingError: for a value out of range.
    """

    steps: int = 1000
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    cosine: bool = False
    batches: int = 10
    prune_step: float = 0.05
    max_rate: float = 0.96
    delta_prune: float = 0.05
    head: str | None = "head"
    name: ClassVar[str] = "fine_pruning"
    # It ranks the penultimate features and masks the dense head's input rows.
    model_needs: ClassVar[tuple[str, ...]] = ("features", "head")

    def __post_init__(self):
        check_optimizer(self)
        require_int(self.batches, "batches", 1)
        require(0 < self.prune_step <= 1, "prune_step", "must be in (0, 1]", self.prune_step)
        require(0 < self.max_rate < 1, "max_rate", "must be in (0, 1)", self.max_rate)
        require(0 <= self.delta_prune <= 1, "delta_prune", "must be in [0, 1]", self.delta_prune)
        require(
            self.head is None or (isinstance(self.head, str) and bool(self.head)),
            "head",
            "must be None (find it) or the head module's path",
            self.head,
        )

    def plan(self, ctx: RepairContext, variables: Variables) -> TuningPlan:
        """Ranks the channels on the tuning images, prunes while validation accuracy holds,
        and plans the fine-tuning of the pruned model (mask kept).

        Args:
            ctx: the repair context; `ctx.defender.tune` is ranked on, `ctx.validate`
                decides the rate.
            variables: the backdoored model (its mask, if any, is kept and combined).

        Returns:
            The plan: the pruned model (mask = its mask × the channel mask), the tuning data
            and budget, and `details` (see the class docstring).
        """
        check_mask(variables.params, variables.mask)
        params = apply_mask(variables.params, variables.mask)
        batch_stats = variables.batch_stats

        # 1. Rank the channels by their mean activation on (a sample of) the tuning images.
        images = ctx.defender.tune.images
        sample = np.arange(len(images))
        wanted = self.batches * self.batch_size
        if len(images) > wanted:
            # A seeded draw from the repair's stream, in canonical order: the plan is a
            # function of the context, and the ranking does not favour the first images.
            perm = jax.random.permutation(jax.random.fold_in(ctx.key, _SAMPLE_STREAM), len(images))
            sample = np.sort(np.asarray(perm)[:wanted])
        _, features = ctx.features(params, batch_stats, images[sample])
        activations = channel_activations(features)
        num_channels = int(activations.shape[0])
        head = find_head(params, num_channels, head=self.head)
        order = dormant_order(activations)

        # 2. Prune the least activated channels in steps while validation accuracy holds; keep
        # the last candidate within the budget (the first one outside it is never returned).
        base = float(ctx.validate(params, batch_stats))
        chosen = np.zeros((0,), np.int32)
        candidates, stopped_by = [], "max_rate"
        for k in candidate_counts(num_channels, self.prune_step, self.max_rate):
            channels = order[:k]
            mask = prune_channels_mask(params, channels, head=head)
            accuracy = float(ctx.validate(apply_mask(params, mask), batch_stats))
            ok = within_budget(accuracy, base, self.delta_prune)
            candidates.append(
                {
                    "num_channels": k,
                    "rate": k / num_channels,
                    "val_accuracy": accuracy,
                    "within_budget": ok,
                }
            )
            if not ok:
                stopped_by = "delta_prune"
                break
            chosen = channels

        channel_mask = prune_channels_mask(params, chosen, head=head)
        mask = jax.tree.map(
            lambda m, c: jnp.asarray(m, jnp.float32) * c, variables.mask, channel_mask
        )
        pruned = Variables(params=apply_mask(params, mask), batch_stats=batch_stats, mask=mask)
        details = {
            "head": head,
            "num_channels": num_channels,
            "channels_pruned": np.sort(chosen).tolist(),
            "num_channels_pruned": int(chosen.size),
            "pruning_rate": chosen.size / num_channels,
            "sampled_images": int(sample.size),
            "base_val_accuracy": base,
            "candidates": candidates,
            "stopped_by": stopped_by,
        }
        return TuningPlan(
            variables=pruned,
            data=ctx.tune_data,
            steps=self.steps,
            lr=self.lr,
            cosine=self.cosine,
            details=details,
        )
