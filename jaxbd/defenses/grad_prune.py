"""Grad-Prune: prune the conv filters the unlearning gradient points at, then fine-tune.

Dunnett, Arablouei, Miller, Dedeoglu and Abuadbba 2024 ("Unlearning backdoor attacks through
gradient-based model pruning") assume the defender knows the trigger: it stamps it on its
own clean images and keeps their *true* labels. The cross-entropy of those triggered copies,
the unlearning loss, is high on a backdoored model (the trigger sends them to the target),
and its gradient is largest on the filters that carry the backdoor. The defense removes them
one at a time, then fine-tunes on clean and triggered-with-true-label pairs.

Rounds. In round r, with the filters pruned so far removed (mask pytree):

1. g = ∂/∂W mean_i CE(f(x_trig,i), y_i) over the defender's triggered *tuning* images, in
   fixed-shape batches, the model in inference mode (running BatchNorm statistics, not
   updated);
2. every filter k of every convolution of the model (`jaxbd.prune.channels.conv_bn_pairs`)
   gets score_k = mean |g| over its kernel weights `kernel[..., k]` (kh·kw·C_in values);
   filters pruned in earlier rounds score −∞;
3. the single global argmax filter is pruned: its kernel slice, and its own BatchNorm's scale
   and shift when it has one (`filter_mask`: the BN that normalizes exactly that conv's
   output, found from the data flow; a pre-activation block's `conv2` and shortcut feed a
   residual sum and have none, so only the kernel slice is zeroed, which already silences
   that channel of the conv's output);
4. on the defender's *validation* images: the clean accuracy (`RepairContext.validate`) and
   the unlearning loss (mean CE of the triggered validation images with their true labels;
   lower = weaker backdoor).

Stopping (`RoundTracker`): after a round whose validation accuracy fell more than α (0.1,
absolute) below the unpruned model's, after `prune_patience` (10) rounds in a row without a
new lowest validation unlearning loss, after `max_rounds` (200: a cap the paper does not
have; CIFAR-10 PreActResNet-18 has 4,800 filters, and the patience rule normally stops long
before), or when every filter is pruned. The model returned is the round with the lowest
validation unlearning loss among the rounds within α, round 0 (nothing pruned) included — as
in the reference code, a round that does not beat the unpruned model's loss is never kept.
(The reference stops at a drop of α or more, jaxbd at more than α — `within_budget`, the
budget rule of every repair; they differ only at exact equality.) Both losses are means over
images (the reference sums per-batch means: the same up to a partial last batch's weight).

Fine-tuning. The pruned model (pruned weights held at exactly 0 by the mask through every
step) is tuned on the tuning images and their triggered copies, all with true labels,
concatenated (2T examples), through the shared loop (`jaxbd.defenses.tune`): SGD lr 1e-3,
momentum 0.9, weight decay 5e-4, batch 128 (the paper's code). Mapping of its early stopping:
the reference trains epochs until the validation *clean loss* has not improved for 10 epochs
and returns the best epoch; jaxbd's loop evaluates every `defense.eval_every` steps and stops
after `defense.patience` rows below the Δ budget on validation *accuracy*, returning the last
row within it. One pass over the 2T mixed examples is ⌊2T / 128⌋ steps here (14 at spc 100,
T = 900; the reference's epoch is 8 steps of 128 clean + their 128 triggered images), so
`defense.eval_every=14 defense.patience=10` is the closest setting, with the step budget
`steps` (default 1000, jaxbd's other repairs' budget) as the cap. Two more differences: each
reference step sums the mean losses of 128 clean and their 128 triggered images (twice the
gradient of one mean over both), while a jaxbd step takes the mean over 128 examples of the
mixed set; and jaxbd's loop augments (crop and flip), the reference's loader does not. The
Δ budget is measured against the undefended model: with the default Δ = 0.02 a pruned model
that lost more than 2% validation accuracy (allowed up to α) is not returned at step 0, so
run Grad-Prune with `defense.delta` ≥ α if that is wanted.

`variant="reference"` reproduces two quirks of the paper's released code (everything else,
the exclusion of pruned filters and the masks included, is as in the standard variant):

- (a) **"The next tensor in parameter order" instead of the own BatchNorm.** The code zeroes
  slice k of `parameters()[i + 1]`, the tensor after the conv's weight. jaxbd's analogue of
  PyTorch's `parameters()` order (module registration order) is the order in which flax
  creates the parameters, i.e. the forward pass's call order (`parameter_order`; the sorted
  order of `jax.tree` flattening would be an artefact of key names). The slice is taken on
  the tensor's output axis (the last in flax: PyTorch's `data[k]` of an [out, ...] weight).
  On a post-activation model (ResNet-18, the tiny CNN) the next tensor is the own BN's
  scale, so only γ_k is zeroed and the BN re-emits its shift β_k. On PreActResNet-18 a
  `conv1` or the stem also hits its own BN's scale, but every `conv2` hits the *next
  block's* `bn1` scale (a BN of a residual sum: channel k of the other branch is silenced
  too), the last block's `conv2` hits the dense head (`head/kernel[:, k]`: the weights of
  class k, or nothing when k ≥ C, where PyTorch would raise an IndexError), and a shortcut
  conv hits its block's `conv1` (filter k of an unrelated conv). (BackdoorBench's
  `PreActBlock` registers the shortcut after `conv2`, so in the reference a downsampling
  block's `conv2` hits the shortcut conv and the shortcut the next block's `bn1`; jaxbd's
  model creates the shortcut before `conv1`, hence that one difference.) The plan's
  `details` name the tensor hit in every round.
- (b) **BatchNorm statistics updated on the first batch of every round.** The reference
  computes the gradient with the model in training mode, which it leaves after the first
  batch: that batch's gradient uses batch statistics, and the running statistics are
  updated once per round (momentum 0.1 in PyTorch's convention, the model's own). Here the
  first batch (the round's batches are a fresh permutation of the tuning images, as the
  reference's shuffling loader draws them) runs with `train=True`, `mutable=["batch_stats"]`,
  and the updated statistics are kept for the rest of the round, its validation and the
  returned model.

Compilation. The gradient of one batch, its accumulation, the per-filter scores with their
masked argmax, and the validation loss are each one jitted function, built once per model
(`TRACES` counts their traces); the mask, the pruned-filter flags and the batch order are
data, so pruning more filters never recompiles. Arrays are replicated over the trainer's
mesh (the gradient pass is small: spc 100 is 900 images).

Decisions read the defender's validation images only; the plan never sees test data.

This module is longer than most: a defense is one file (the scoring, the rounds, both
variants and the repair), so the method and its reference quirks read in one place.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbd.data import augment as augment_lib
from jaxbd.defenses.base import RepairContext, TuningPlan, Variables
from jaxbd.defenses.curve import within_budget
from jaxbd.defenses.finetune import check_optimizer
from jaxbd.prune.channels import ConvBN, conv_bn_pairs, filter_mask, module_params
from jaxbd.prune.masks import apply_mask, check_mask
from jaxbd.settings import require, require_int

PyTree = Any
Path = tuple[str, ...]

VARIANTS = ("standard", "reference")

TRACES: collections.Counter = collections.Counter()
"""How often each jitted program was traced ("grad", "grad_train", "choose", "loss"): the
tests read it to check that pruning more filters compiles nothing new."""

# fold_in tags of the repair's streams; `tune` uses tags 1 and 2 of the same key.
_TRIGGER_STREAM = 0x4750  # the trigger's randomness (e.g. random positions)
_ORDER_STREAM = 0x4751  # the reference variant's per-round batch order


# -- the pure pieces ---------------------------------------------------------------------------


def filter_scores(kernel_grads: Sequence[jax.Array]) -> list[jax.Array]:
    """Mean absolute gradient of every filter.

    Args:
        kernel_grads: per conv, the gradient of its kernel, f32[kh, kw, C_in, C_out].

    Returns:
        Per conv, f32[C_out]: mean |g| over `g[..., k]` (all axes but the output one).
    """
    return [jnp.mean(jnp.abs(g), axis=tuple(range(g.ndim - 1))) for g in kernel_grads]


def choose_filter(
    kernel_grads: Sequence[jax.Array], keep: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The global argmax filter among the unpruned ones (traceable).

    Args:
        kernel_grads: per conv (in the map's order), the gradient of its kernel,
            f32[kh, kw, C_in, C_out].
        keep: f32[F] over all F filters concatenated in the same order (conv 0's C_out
            filters first): 1 for a candidate, 0 for an already-pruned filter.

    Returns:
        (int32[] the flat index of the chosen filter, f32[] its score); ties go to the first
        in order. When no filter is left the score is −∞ (the caller must check).
    """
    scores = jnp.concatenate(filter_scores(kernel_grads))
    masked = jnp.where(keep > 0, scores, -jnp.inf)
    index = jnp.argmax(masked)
    return index.astype(jnp.int32), masked[index]


def flat_offsets(pairs: Sequence[ConvBN]) -> np.ndarray:
    """int64[len(pairs) + 1] where each conv's filters start in the flat filter order."""
    return np.concatenate([[0], np.cumsum([p.out_channels for p in pairs])]).astype(np.int64)


def unflatten_filter(pairs: Sequence[ConvBN], index: int) -> tuple[int, int]:
    """(conv position in `pairs`, filter index in that conv) of a flat filter index."""
    offsets = flat_offsets(pairs)
    if not 0 <= index < offsets[-1]:
        raise ValueError(f"flat filter index {index} is not in [0, {offsets[-1]})")
    conv = int(np.searchsorted(offsets, index, side="right") - 1)
    return conv, int(index - offsets[conv])


def keep_vector(pairs: Sequence[ConvBN], pruned: Sequence[tuple[Path, int]]) -> np.ndarray:
    """f32[F]: 0 at the pruned filters (conv path, filter), 1 elsewhere (flat order)."""
    offsets = flat_offsets(pairs)
    position = {p.conv: i for i, p in enumerate(pairs)}
    keep = np.ones(offsets[-1], np.float32)
    for conv, k in pruned:
        keep[offsets[position[tuple(conv)]] + k] = 0.0
    return keep


def parameter_order(model: nn.Module, image_shape: Sequence[int]) -> tuple[Path, ...]:
    """The model's parameter leaves in the order flax creates them (forward call order).

    The analogue of PyTorch's `parameters()` order for the reference variant (see the
    module docstring). Traced abstractly (`jax.eval_shape`): nothing is computed.

    Args:
        model: a flax module called as `model(x, train=False)`.
        image_shape: (H, W, C) of one input image.

    Returns:
        Leaf paths, e.g. ("stage1_block1", "conv1", "kernel"), in creation order.
    """
    order: list[Path] = []

    def walk(tree, prefix):
        for name, value in tree.items():  # insertion order: the order flax created them
            if isinstance(value, Mapping):
                walk(value, (*prefix, name))
            else:
                order.append((*prefix, name))

    def trace():
        variables = model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)
        # Read the order here, inside the trace: the dict flax built keeps its creation
        # order, while the pytree eval_shape returns has its keys sorted.
        walk(variables["params"], ())
        return variables

    jax.eval_shape(trace)
    return tuple(order)


def next_tensor(order: Sequence[Path], conv: Path) -> Path | None:
    """The leaf after a conv's kernel in parameter order (the reference's zeroing target),
    or None when the kernel is the last leaf."""
    i = list(order).index((*conv, "kernel"))
    return tuple(order[i + 1]) if i + 1 < len(order) else None


def pruning_mask(
    params: PyTree,
    pairs: Sequence[ConvBN],
    pruned: Sequence[tuple[Path, int]],
    *,
    variant: str = "standard",
    order: Sequence[Path] | None = None,
) -> tuple[PyTree, list[dict[str, Any]]]:
    """The mask that removes the pruned filters.

    Args:
        params: the model's parameters (only their structure and shapes are read).
        pairs: the conv → own BatchNorm map (`conv_bn_pairs`).
        pruned: (conv path, filter index) pairs, in pruning order.
        variant: "standard": each filter's kernel slice (and conv bias), its own BN's scale
            and shift (`filter_mask`). "reference": the kernel slice and slice k of the
            tensor after the kernel in `order` (its last axis), as the reference code does.
        order: the parameter order (`parameter_order`); required for "reference".

    Returns:
        (a float32 0/1 pytree like `params`, per pruned filter what else was zeroed:
        {"tensor": "/"-joined path or None, "in_range": bool} for "reference", {"bn":
        its own BN's path or None} for "standard").

    Raises:
        ValueError: for an unknown variant, or "reference" without `order`.
    """
    by_conv = {p.conv: p for p in pairs}
    if variant == "standard":
        grouped: dict[Path, list[int]] = {}
        for conv, k in pruned:
            grouped.setdefault(tuple(conv), []).append(int(k))
        mask = jax.tree.map(np.asarray, filter_mask(params, pairs, grouped))
        hits = [
            {"bn": None if by_conv[tuple(c)].bn is None else "/".join(by_conv[tuple(c)].bn)}
            for c, _ in pruned
        ]
        return mask, hits
    if variant != "reference":
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if order is None:
        raise ValueError('variant="reference" needs the parameter order (parameter_order)')
    flat = {
        tuple(_key_name(k) for k in path): np.ones(np.shape(leaf), np.float32)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    hits = []
    for conv, k in pruned:
        conv, k = tuple(conv), int(k)
        flat[(*conv, "kernel")][..., k] = 0.0
        target = next_tensor(order, conv)
        in_range = target is not None and k < flat[target].shape[-1]
        if in_range:
            flat[target][..., k] = 0.0  # PyTorch's data[k] of an [out, ...] tensor
        hits.append({"tensor": None if target is None else "/".join(target), "in_range": in_range})
    mask = jax.tree_util.tree_map_with_path(
        lambda path, _: flat[tuple(_key_name(k) for k in path)], params
    )
    return mask, hits


@dataclasses.dataclass
class RoundTracker:
    """The stopping rule and the best round (see the module docstring).

    Round 0 is the unpruned model. After each round, `update` records its validation
    accuracy and unlearning loss; a round is the new best when its loss is lower than the
    best so far and its accuracy is within α of round 0's.

    Attributes:
        base_accuracy: round 0's validation accuracy.
        base_loss: round 0's validation unlearning loss.
        alpha: the accuracy budget, absolute.
        patience: rounds in a row without a new best before stopping.
        max_rounds: the most rounds.
        best_round: the best round so far (0: the unpruned model).
        best_loss: its loss.
        rounds: rounds recorded.
        since_best: rounds since the best one.
        stop_reason: None while running; "alpha", "patience", "max_rounds" or "no_filters".
    """

    base_accuracy: float
    base_loss: float
    alpha: float
    patience: int
    max_rounds: int
    best_round: int = 0
    best_loss: float = math.inf
    rounds: int = 0
    since_best: int = 0
    stop_reason: str | None = None

    def __post_init__(self):
        self.best_loss = self.base_loss
        if self.max_rounds < 1:
            self.stop_reason = "max_rounds"

    def update(self, accuracy: float, loss: float) -> bool:
        """Records the next round; returns whether it is the new best."""
        if self.stop_reason is not None:
            raise RuntimeError(f"the rounds have stopped ({self.stop_reason})")
        self.rounds += 1
        within = within_budget(accuracy, self.base_accuracy, self.alpha)
        best = within and loss < self.best_loss
        if best:
            self.best_round, self.best_loss, self.since_best = self.rounds, loss, 0
        else:
            self.since_best += 1
        if not within:
            self.stop_reason = "alpha"
        elif self.since_best >= self.patience:
            self.stop_reason = "patience"
        elif self.rounds >= self.max_rounds:
            self.stop_reason = "max_rounds"
        return best


# -- the jitted programs ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Programs:
    grad: Callable
    choose: Callable
    loss: Callable


@functools.lru_cache(maxsize=16)
def _programs(model: nn.Module, mean: tuple, std: tuple, convs: tuple[Path, ...]) -> _Programs:
    """The jitted programs of one model (built once; masks and batch orders are data)."""

    def batch_loss(params, batch_stats, images, labels, weights, train):
        x = augment_lib.normalize(images, mean, std)
        variables = {"params": params, "batch_stats": batch_stats}
        if train:
            (logits, _), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
            batch_stats = updates["batch_stats"]
        else:
            logits, _ = model.apply(variables, x, train=False)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return jnp.sum(weights * ce), batch_stats

    def masked(params, mask):
        return jax.tree.map(lambda p, m: p * m.astype(p.dtype), params, mask)

    def grad(acc, params, batch_stats, mask, images, labels, weights, rows, i, *, train):
        # acc: (per-conv kernel-gradient sums, loss sum). Rows int32[nb, b] of the batch
        # order and weights f32[nb, b] (0 on padding) are data: a new order compiles nothing.
        TRACES["grad_train" if train else "grad"] += 1
        index, w = rows[i], weights[i]
        (loss, stats), g = jax.value_and_grad(batch_loss, has_aux=True)(
            masked(params, mask), batch_stats, images[index], labels[index], w, train
        )
        kernels = tuple(module_params(g, c)["kernel"] for c in convs)
        sums = tuple(a + k for a, k in zip(acc[0], kernels, strict=True))
        return (sums, acc[1] + loss), stats

    def choose(sums, count, keep):
        TRACES["choose"] += 1
        return choose_filter([s / count for s in sums], keep)

    def loss(acc, params, batch_stats, mask, images, labels, weights, rows, i):
        TRACES["loss"] += 1
        index = rows[i]
        value, _ = batch_loss(
            masked(params, mask), batch_stats, images[index], labels[index], weights[i], False
        )
        return acc + value

    return _Programs(
        grad=jax.jit(grad, static_argnames="train", donate_argnums=0),
        choose=jax.jit(choose),
        loss=jax.jit(loss),
    )


def batch_rows(order: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-shape batches of an example order.

    Args:
        order: int[N] example indices, in the order they are batched.
        batch_size: B (≤ N is not required: one padded batch then).

    Returns:
        (int32[nb, B] rows, f32[nb, B] weights): nb = ⌈N / B⌉, the last batch padded with
        row 0 at weight 0, so every batch has one shape and padding adds nothing.
    """
    n = len(order)
    nb = max(1, math.ceil(n / batch_size))
    rows = np.zeros(nb * batch_size, np.int32)
    weights = np.zeros(nb * batch_size, np.float32)
    rows[:n], weights[:n] = order, 1.0
    return rows.reshape(nb, batch_size), weights.reshape(nb, batch_size)


def unlearning_gradients(
    programs: _Programs,
    convs: Sequence[Path],
    params: PyTree,
    batch_stats: PyTree,
    mask: PyTree,
    images: jax.Array,
    labels: jax.Array,
    rows: jax.Array,
    weights: jax.Array,
    *,
    first_batch_train: bool = False,
) -> tuple[tuple[jax.Array, ...], jax.Array, PyTree]:
    """Summed unlearning gradients of the convs' kernels over all batches.

    Args:
        programs: `_programs(model, mean, std, convs)`.
        convs: the conv paths, in the map's order.
        params: the parameters (the mask is applied inside).
        batch_stats: the BatchNorm statistics.
        mask: float 0/1 pytree like `params`.
        images: uint8[N, H, W, 3] the triggered tuning images (on the devices).
        labels: int32[N] their TRUE labels.
        rows: int32[nb, B] the batches (`batch_rows`).
        weights: f32[nb, B] 1 on real examples, 0 on padding.
        first_batch_train: run batch 0 in training mode and keep its updated running
            statistics for the later batches (the reference variant's quirk (b); batch 0 must
            then have no padding).

    Returns:
        (per conv f32[kh, kw, C_in, C_out] Σ_i ∂CE_i/∂kernel, f32[] Σ_i CE_i, the BatchNorm
        statistics after the pass: updated by batch 0 when `first_batch_train`, else the
        input ones).
    """
    acc = (
        tuple(jnp.zeros(np.shape(module_params(params, c)["kernel"]), jnp.float32) for c in convs),
        jnp.zeros((), jnp.float32),
    )
    # The accumulator lives where the data does, as the program's outputs will: a first call
    # with differently placed zeros would compile a second time.
    acc = jax.device_put(acc, images.sharding)
    for i in range(int(rows.shape[0])):
        train = first_batch_train and i == 0
        acc, stats = programs.grad(
            acc, params, batch_stats, mask, images, labels, weights, rows, i, train=train
        )
        if train:
            batch_stats = stats
    return acc[0], acc[1], batch_stats


# -- the repair --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradPrune:
    """Grad-Prune (Dunnett et al. 2024): prune filters along the unlearning gradient, then
    fine-tune on clean + triggered-with-true-label pairs. Assumes trigger knowledge
    (`needs_trigger`); the paper's data is spc = 100 (90 tuning / 10 validation per class).

    The plan's `details`: "variant", "alpha", "prune_patience", "max_rounds"; "rounds" (run),
    "best_round" (0: nothing pruned), "stop_reason" ("alpha", "patience", "max_rounds" or
    "no_filters"); "base_val_accuracy" and "base_val_unlearning_loss" (the unpruned model's),
    "best_val_unlearning_loss"; "num_filters" (all convs' filters), "num_pruned" and
    "pruning_rate" (of the returned model), "pruned_per_layer" (conv name -> count);
    "filters_pruned" (of the returned model: "conv", "filter", "round"); "round_log" (every
    round run: "round", "conv", "filter", "score" (mean |g|), "tune_unlearning_loss" (before
    that round's pruning), "val_accuracy", "val_unlearning_loss" (after it), and "bn" (its own
    BatchNorm, standard) or "tensor"/"in_range" (what the reference zeroed besides the
    kernel)); "tuning_examples" (2T).

    Attributes:
        steps: fine-tuning SGD steps after pruning (a cap; see the module docstring for the
            mapping of the reference's early stopping onto the shared loop).
        lr: fine-tuning learning rate (the paper's code: 1e-3).
        momentum: SGD momentum (0.9).
        weight_decay: L2 coefficient added to the gradient (5e-4).
        batch_size: examples per fine-tuning step, and per gradient batch when pruning (128).
        cosine: decay the learning rate to 0 over the steps (the paper's code: constant).
        alpha: pruning stops once validation accuracy falls more than this (absolute) below
            the unpruned model's (0.1).
        prune_patience: pruning stops after this many rounds without a lower validation
            unlearning loss (10).
        max_rounds: the most pruning rounds (200; the paper has no cap).
        variant: "standard", or "reference" for the released code's two quirks (see the
            module docstring).

    Raises:
        InvalidSettingError: for a value out of range.
    """

    # The defender must know the trigger: the pipeline passes the attack's test transform as
    # `RepairContext.trigger` only to a repair that declares this.
    needs_trigger: ClassVar[bool] = True

    steps: int = 1000
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    cosine: bool = False
    alpha: float = 0.1
    prune_patience: int = 10
    max_rounds: int = 200
    variant: str = "standard"
    name: ClassVar[str] = "grad_prune"

    def __post_init__(self):
        check_optimizer(self)
        require(0 <= self.alpha <= 1, "alpha", "must be in [0, 1]", self.alpha)
        require_int(self.prune_patience, "prune_patience", 1)
        require_int(self.max_rounds, "max_rounds", 0)
        require(self.variant in VARIANTS, "variant", f"must be one of {VARIANTS}", self.variant)

    def plan(self, ctx: RepairContext, variables: Variables) -> TuningPlan:
        """Prunes filter by filter along the unlearning gradient, keeps the best round on
        validation, and plans the fine-tuning on clean + triggered-with-true-label pairs.

        Args:
            ctx: the repair context; `ctx.trigger` (the attack's test-time transform,
                `(key, uint8[N, H, W, 3], int32[N]) -> (images, labels)`; its labels are
                ignored) triggers the defender's images, `ctx.defender.tune` gives the
                gradients, `ctx.defender.val` and `ctx.validate` the decisions.
            variables: the backdoored model (its mask, if any, is kept and combined).

        Returns:
            The plan: the best round's model, the mixed tuning data, and `details` (see the
            class docstring).

        Raises:
            ValueError: without `ctx.trigger`, without tuning or validation images, or if the
                trigger returns images of another shape or dtype.
        """
        trigger = getattr(ctx, "trigger", None)
        if trigger is None:
            raise ValueError(
                "grad_prune assumes the defender knows the trigger, but the context has none "
                "(RepairContext.trigger): grant it with config.defender.trigger_knowledge=True"
            )
        tune_set, val_set = ctx.defender.tune, ctx.defender.val
        if len(tune_set) < 1 or len(val_set) < 1 or ctx.validate is None:
            raise ValueError("grad_prune needs the defender's tuning and validation images")
        check_mask(variables.params, variables.mask)
        base_mask = jax.tree.map(lambda m: np.asarray(m, np.float32), variables.mask)
        trainer = ctx.trainer
        put = trainer.replicate
        # Everything on the mesh once, so the programs' inputs keep one placement round after
        # round (a new placement would compile again).
        params = put(apply_mask(variables.params, variables.mask))
        batch_stats = put(variables.batch_stats)
        model = trainer.model
        image_shape = tuple(np.shape(tune_set.images)[1:])
        pairs = conv_bn_pairs(model, params, image_shape)
        convs = tuple(p.conv for p in pairs)
        order = parameter_order(model, image_shape) if self.variant == "reference" else None
        programs = _programs(model, tuple(trainer.mean), tuple(trainer.std), convs)

        # 1. The defender's triggered copies (true labels kept), tuning and validation at once.
        n_tune = len(tune_set)
        triggered = _trigger(
            trigger,
            jax.random.fold_in(ctx.key, _TRIGGER_STREAM),
            np.concatenate([tune_set.images, val_set.images]),
            np.concatenate([tune_set.labels, val_set.labels]),
        )
        trig_tune, trig_val = triggered[:n_tune], triggered[n_tune:]
        tune_images, tune_labels = put(trig_tune), put(np.asarray(tune_set.labels, np.int32))
        val_images, val_labels = put(trig_val), put(np.asarray(val_set.labels, np.int32))
        b = min(self.batch_size, n_tune)
        val_rows, val_weights = map(put, batch_rows(np.arange(len(val_set)), b))
        canonical = tuple(map(put, batch_rows(np.arange(n_tune), b)))

        def unlearning_loss(mask, stats) -> float:
            acc = jax.device_put(jnp.zeros((), jnp.float32), val_images.sharding)
            for i in range(int(val_rows.shape[0])):
                acc = programs.loss(
                    acc, params, stats, mask, val_images, val_labels, val_weights, val_rows, i
                )
            return float(acc) / len(val_set)

        def evaluate(mask, stats) -> tuple[float, float]:
            accuracy = float(ctx.validate(apply_mask(params, mask), stats))
            return accuracy, unlearning_loss(mask, stats)

        # 2. The rounds.
        mask = put(base_mask)  # the current mask on the devices (data for every program)
        base_accuracy, base_loss = evaluate(mask, batch_stats)
        tracker = RoundTracker(
            base_accuracy, base_loss, self.alpha, self.prune_patience, self.max_rounds
        )
        pruned: list[tuple[Path, int]] = []
        records: list[dict[str, Any]] = []
        best = (mask, batch_stats)
        stats = batch_stats
        num_filters = int(flat_offsets(pairs)[-1])
        while tracker.stop_reason is None:
            if len(pruned) == num_filters:
                tracker.stop_reason = "no_filters"
                break
            r = tracker.rounds + 1
            if self.variant == "reference":
                # The reference's loader reshuffles every round; its first batch (in
                # training mode) is a random one.
                perm = np.asarray(
                    jax.random.permutation(
                        jax.random.fold_in(jax.random.fold_in(ctx.key, _ORDER_STREAM), r),
                        n_tune,
                    )
                )
                rows, weights = map(put, batch_rows(perm, b))
            else:
                rows, weights = canonical
            sums, loss_sum, stats = unlearning_gradients(
                programs,
                convs,
                params,
                stats,
                mask,
                tune_images,
                tune_labels,
                rows,
                weights,
                first_batch_train=self.variant == "reference",
            )
            keep = put(keep_vector(pairs, pruned))
            index, score = programs.choose(sums, jnp.float32(n_tune), keep)
            conv_i, k = unflatten_filter(pairs, int(index))
            pruned.append((convs[conv_i], k))
            round_mask, hits = pruning_mask(
                params, pairs, pruned, variant=self.variant, order=order
            )
            mask = put(jax.tree.map(np.multiply, base_mask, round_mask))
            accuracy, loss = evaluate(mask, stats)
            records.append(
                {
                    "round": r,
                    "conv": pairs[conv_i].name,
                    "filter": k,
                    "score": float(score),
                    "tune_unlearning_loss": float(loss_sum) / n_tune,
                    "val_accuracy": accuracy,
                    "val_unlearning_loss": loss,
                    **hits[-1],
                }
            )
            if tracker.update(accuracy, loss):
                best = (mask, stats)

        # 3. The best round's model, and the fine-tuning data: clean + triggered, true labels.
        mask, best_stats = best
        result = Variables(params=apply_mask(params, mask), batch_stats=best_stats, mask=mask)
        data = trainer.put(
            np.concatenate([tune_set.images, trig_tune]),
            np.concatenate([tune_set.labels, tune_set.labels]),
        )
        kept = [rec for rec in records if rec["round"] <= tracker.best_round]
        per_layer = collections.Counter(rec["conv"] for rec in kept)
        details = {
            "variant": self.variant,
            "alpha": self.alpha,
            "prune_patience": self.prune_patience,
            "max_rounds": self.max_rounds,
            "rounds": tracker.rounds,
            "best_round": tracker.best_round,
            "stop_reason": tracker.stop_reason,
            "base_val_accuracy": base_accuracy,
            "base_val_unlearning_loss": base_loss,
            "best_val_unlearning_loss": tracker.best_loss,
            "num_filters": num_filters,
            "num_pruned": len(kept),
            "pruning_rate": len(kept) / num_filters if num_filters else 0.0,
            "pruned_per_layer": {p.name: per_layer.get(p.name, 0) for p in pairs},
            "filters_pruned": [
                {"conv": rec["conv"], "filter": rec["filter"], "round": rec["round"]}
                for rec in kept
            ],
            "round_log": records,
            "tuning_examples": 2 * n_tune,
        }
        return TuningPlan(
            variables=result,
            data=data,
            steps=self.steps,
            lr=self.lr,
            cosine=self.cosine,
            details=details,
        )


def _trigger(trigger: Callable, key: jax.Array, images: np.ndarray, labels: np.ndarray):
    """uint8[N, H, W, 3] triggered copies of host images (one jitted call); the transform's
    labels (the attacker's) are discarded: the defender keeps the true ones."""
    out, _ = jax.jit(trigger)(key, jnp.asarray(images), jnp.asarray(labels, jnp.int32))
    out = np.asarray(jax.device_get(out))
    if out.dtype != np.uint8 or out.shape != images.shape:
        raise ValueError(
            f"the trigger returned images of dtype {out.dtype} and shape {out.shape}; "
            f"expected uint8 {images.shape}"
        )
    return out


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)
