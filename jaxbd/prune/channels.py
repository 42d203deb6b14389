"""Filter-level pruning: which BatchNorm normalizes each convolution's output, and masks that
remove whole filters.

Pruning a conv filter k (output channel k) must also silence the BatchNorm channel that
normalizes it, or the BN re-emits its shift β_k (and, in inference mode, −γ_k·μ_k/σ_k) where
the filter's output was. Which BN that is follows the data flow, not the order of the
parameters (pairing by order is BackdoorBench's CLP bug and Grad-Prune's reference bug):
`conv_bn_pairs` traces the model once and finds each conv's own BatchNorm.

`filter_mask` turns "prune filters K of conv c" into a float 0/1 mask pytree like the
parameters (kernel slices `[..., k]`, the conv's bias[k] if it has one, and its own BN's
scale[k] and bias[k]). Masks are data: combine one with an existing mask by multiplication;
training with it (`Trainer.new_state(..., mask=...)`) keeps the pruned weights at exactly 0,
and pruning more filters changes only the mask's values, so nothing recompiles.
`filter_keep_mask` is the same map, traceable, from per-filter keep vectors.

    pairs = conv_bn_pairs(model, params, (32, 32, 3))
    mask = filter_mask(params, pairs, {("stage1_block1", "conv1"): [3, 7]})
    variables = Variables(apply_mask(params, mask), batch_stats, mask)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxbd.types import PyTree

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ConvBN:
    """One convolution and the BatchNorm that normalizes its output (see the module
    docstring).

    Attributes:
        conv: the conv module's path in the parameter tree, e.g. ("stage2_block1",
            "conv1"); its kernel is `params[conv...]["kernel"]`, f32[kh, kw, C_in/groups,
            C_out], and filter k is `kernel[..., k]`.
        bn: the path of its own BatchNorm (scale, bias f32[C_out] in `params[bn...]`, mean
            and var in `batch_stats[bn...]`), or None when its output reaches no BatchNorm
            directly (a residual sum, an activation, or nothing).
        out_channels: C_out, the conv's filters.
        epsilon: the BatchNorm's ε (it normalizes by sqrt(var + ε)); None without a BN.
    """

    conv: Path
    bn: Path | None
    out_channels: int
    epsilon: float | None = None

    @property
    def name(self) -> str:
        """The conv's "/"-joined path, e.g. "stage2_block1/conv1"."""
        return "/".join(self.conv)


def conv_bn_pairs(
    model: nn.Module, params: PyTree, image_shape: Sequence[int]
) -> tuple[ConvBN, ...]:
    """Every convolution of a model with its own BatchNorm, in call order.

    Pairing by parameter order is wrong: in a pre-activation ResNet the BN after
    `stageN_blockM/conv2` in parameter order is the next block's `bn1`, which normalizes a
    residual *sum*, and in some blocks the conv before a BN in parameter order is a shortcut
    conv that feeds no BN at all. So the model is traced with every module call intercepted
    (`flax.linen.intercept_methods`), recording the array each `nn.Conv` call returns and, for
    each `nn.BatchNorm` call, whether its input *is* (object identity) one of those arrays.

    **A conv's own BatchNorm** is the first BatchNorm called on exactly that conv's output,
    with nothing in between. Then BN channel k is a function of conv channel k alone, and
    zeroing the filter's kernel slice and the BN's scale γ_k and shift β_k makes the BN's
    output channel k exactly 0 in both modes. A conv whose output goes anywhere else first
    (an addition, an activation, a cast) has no own BatchNorm (`bn=None`). On jaxbd's models:

    | model             | conv                             | its own BatchNorm               |
    | ----------------- | -------------------------------- | ------------------------------- |
    | `resnet18`        | `stem_conv`                      | `stem_bn`                       |
    |                   | `stageN_blockM/conv1`, `conv2`   | the same block's `bn1`, `bn2`   |
    |                   | `stageN_blockM/shortcut_conv`    | `stageN_blockM/shortcut_bn`     |
    | `preact_resnet18` | `stem_conv`                      | `stage1_block1/bn1`             |
    |                   | `stageN_blockM/conv1`            | the same block's `bn2`          |
    |                   | `stageN_blockM/conv2`            | None (summed with the shortcut) |
    |                   | `stageN_blockM/shortcut_conv`    | None (summed with the residual) |
    | `tiny_cnn`        | `conv1`, `conv2`                 | `bn1`, `bn2`                    |

    For the pre-activation network, the BN that normalizes a `conv2` or shortcut output is
    the next block's `bn1`, applied to the sum `conv2 + shortcut`; its channel k mixes both
    terms, so it is *not* that conv's own and is left alone: zeroing it would also silence
    the other term (and, for the stem, `stage1_block1/bn1` does normalize the stem's output
    alone — the identity shortcut reads the same array, un-normalized). Pruning such a
    filter zeroes its kernel slice only, which makes the conv's output channel exactly 0
    (its convs have no bias).

    The model is traced once, abstractly (`jax.eval_shape` of its initialization on one
    image of `image_shape`, in inference mode), so this is cheap even at full width. The
    result does not depend on the image size as long as the model accepts it (for jaxbd's
    fully convolutional models any size ≥ 1 works; 32×32 is the safe choice).

    Args:
        model: a flax module called as `model(x, train=False)` (jaxbd's models).
        params: its parameters; every traced conv (and BN) must be in them with the traced
            shapes, and every 4-D "kernel" leaf in them must belong to a traced conv.
        image_shape: (H, W, C) of one input image.

    Returns:
        One `ConvBN` per `nn.Conv` module, in the order the forward pass calls them.

    Raises:
        ValueError: if a conv module is called more than once (shared weights: its filters
            would have several outputs), or the parameters do not match the model.
    """
    convs: dict[Path, Any] = {}  # conv path -> the array its call returned
    own_bn: dict[Path, tuple[Path, float]] = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        path = tuple(module.path)
        if isinstance(module, nn.BatchNorm) and args:
            x = args[0]
            # Identity, not equality: the BN reads this very array, so nothing (no sum, no
            # activation) lies between the conv and it.
            for conv_path, out in convs.items():
                if out is x and conv_path not in own_bn:
                    own_bn[conv_path] = (path, float(module.epsilon))
                    break
            return next_fun(*args, **kwargs)
        out = next_fun(*args, **kwargs)
        if isinstance(module, nn.Conv):
            if path in convs:
                raise ValueError(
                    f"conv {'/'.join(path)} is called more than once; shared convolutions "
                    "have no single output per filter to pair with a BatchNorm"
                )
            convs[path] = out
        return out

    def trace():
        with nn.intercept_methods(interceptor):
            return model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)

    traced = jax.eval_shape(trace)["params"]

    pairs = []
    for path in convs:
        kernel = _leaf(params, path, "kernel", "conv")
        traced_kernel = _leaf(traced, path, "kernel", "conv")
        if np.shape(kernel) != tuple(traced_kernel.shape):
            raise ValueError(
                f"conv {'/'.join(path)}: the parameters' kernel is {list(np.shape(kernel))}, "
                f"the model's is {list(traced_kernel.shape)}: params of another model?"
            )
        c_out = int(np.shape(kernel)[-1])
        bn, eps = own_bn.get(path, (None, None))
        if bn is not None:
            scale = _leaf(params, bn, "scale", "BatchNorm")
            if np.shape(scale) != (c_out,):
                raise ValueError(
                    f"BatchNorm {'/'.join(bn)} has scale {list(np.shape(scale))}, its conv "
                    f"{'/'.join(path)} has {c_out} filters"
                )
        pairs.append(ConvBN(conv=path, bn=bn, out_channels=c_out, epsilon=eps))

    # Every 4-D kernel of the parameters must be a traced conv: a conv the trace missed
    # (e.g. behind a Python branch the inference pass skips) would silently go unpruned.
    seen = set(convs)
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = tuple(_key_name(k) for k in key_path)
        if names[-1] == "kernel" and np.ndim(leaf) == 4 and names[:-1] not in seen:
            raise ValueError(
                f"{'/'.join(names)} looks like a conv kernel but no nn.Conv call produced it "
                "in the traced forward pass"
            )
    return tuple(pairs)


def filter_keep_mask(
    params: PyTree, pairs: Iterable[ConvBN], keep: Mapping[Path | str, jax.Array]
) -> PyTree:
    """The mask that scales each listed conv's filters (and their own BN channels) by `keep`.

    Traceable (no host reads of `keep`), so it can be built inside a jitted function from
    per-filter vectors.

    Args:
        params: the model's parameters.
        pairs: the map (`conv_bn_pairs`).
        keep: conv path (tuple, or "/"-joined string) -> f32[C_out] per-filter factor (1
            keeps, 0 prunes). Convs not listed are all ones.

    Returns:
        A float32 pytree like `params`: `keep[c]` broadcast over the last axis of conv c's
        kernel (and bias, if any) and over its own BN's scale and bias; 1 elsewhere.

    Raises:
        ValueError: for a path that is not a conv of `pairs`, or a vector of the wrong size.
    """
    by_conv = {p.conv: p for p in pairs}
    factors: dict[Path, jax.Array] = {}  # module path -> f32[C_out]
    for key, vector in keep.items():
        path = _as_path(key)
        if path not in by_conv:
            known = ", ".join(p.name for p in by_conv.values())
            raise ValueError(f"{'/'.join(path)} is not a conv of the map (convs: {known})")
        pair = by_conv[path]
        vector = jnp.asarray(vector, jnp.float32)
        if vector.shape != (pair.out_channels,):
            raise ValueError(
                f"keep[{pair.name}] must be f32[{pair.out_channels}], got shape {vector.shape}"
            )
        factors[path] = vector
        if pair.bn is not None:
            factors[pair.bn] = vector

    def leaf_mask(key_path, leaf):
        names = tuple(_key_name(k) for k in key_path)
        ones = jnp.ones(np.shape(leaf), jnp.float32)
        factor = factors.get(names[:-1])
        if factor is None or names[-1] not in ("kernel", "bias", "scale"):
            return ones
        return ones * factor  # broadcasts over the last (output-channel) axis

    return jax.tree_util.tree_map_with_path(leaf_mask, params)


def filter_mask(
    params: PyTree,
    pairs: Iterable[ConvBN],
    pruned: Mapping[Path | str, Sequence[int] | np.ndarray | jax.Array],
) -> PyTree:
    """The mask that prunes whole filters and their own BatchNorm channels.

    Args:
        params: the model's parameters.
        pairs: the map (`conv_bn_pairs`).
        pruned: conv path (tuple, or "/"-joined string) -> int[K] filter indices to prune,
            each in [0, C_out) (repeats allowed; empty allowed).

    Returns:
        A float32 0/1 pytree like `params`: for each pruned filter k of conv c, 0 on
        `kernel[..., k]` (and `bias[k]`) of c and on `scale[k]`, `bias[k]` of c's own
        BatchNorm when it has one; 1 everywhere else. Multiply it into an existing mask.

    Raises:
        ValueError: for a path that is not a conv of `pairs`, or an index out of range.
    """
    pairs = tuple(pairs)
    by_conv = {p.conv: p for p in pairs}
    keep = {}
    for key, indices in pruned.items():
        path = _as_path(key)
        if path not in by_conv:
            known = ", ".join(p.name for p in pairs)
            raise ValueError(f"{'/'.join(path)} is not a conv of the map (convs: {known})")
        n = by_conv[path].out_channels
        indices = np.asarray(jax.device_get(indices), np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise ValueError(
                f"filters of {'/'.join(path)} must be in [0, {n}), got {indices.tolist()}"
            )
        vector = np.ones(n, np.float32)
        vector[indices] = 0.0
        keep[path] = vector
    return filter_keep_mask(params, pairs, keep)


def module_params(tree: PyTree, path: Path | str) -> Mapping[str, Any]:
    """The leaves of one module in a variables tree (params or batch_stats), by name.

    Args:
        tree: e.g. `params` or `batch_stats`.
        path: the module's path (tuple, or "/"-joined string), e.g. a `ConvBN.bn`.

    Raises:
        KeyError: if the tree has no such module.
    """
    node = tree
    for name in _as_path(path):
        node = node[name]
    return node


def _as_path(key: Path | str) -> Path:
    return tuple(key.split("/")) if isinstance(key, str) else tuple(key)


def _leaf(tree: PyTree, path: Path, name: str, what: str):
    try:
        return module_params(tree, path)[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"{what} {'/'.join(path)} has no {name!r} in the parameters: params of another model?"
        ) from None


def _key_name(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)
