"""A `Classifier`: any flax module with its variables and input normalization.

Every method that examines or repairs a trained model takes one. Images go in as uint8
(normalization is inside); `logits`, `features` and `intermediates` are pure functions of the
images. jaxbd's own models return `(logits, features)` and sow their stage outputs; a user's
module may return logits only, and the `Classifier` then finds what methods read inside it
by the rules of docs/library.md ("What a method reads inside a model"): the features are the
input of the last `nn.Dense` called (the head), and the taps are the last conv or BatchNorm
output at each spatial resolution, unless declared. `engine_model()` is the same network as
the engine trains it: `apply(variables, x, train, mutable) -> (logits, features)`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbd.data.augment import normalize
from jaxbd.types import PyTree

CAPABILITIES = ("features", "head", "taps", "batchnorm", "conv_bn")
"""What a method may need from a model (a repair's or detector's `model_needs`)."""


class MissingCapabilityError(ValueError):
    """A method needs something of the model that it lacks (the message says what)."""


def _path(module: nn.Module) -> str:
    return "/".join(str(p) for p in module.path)


class _Recorder:
    """Records, during one forward pass, the inputs of `nn.Dense` calls and the outputs of
    conv/BatchNorm calls (or of declared modules), through `nn.intercept_methods`."""

    def __init__(self, feature_layer: str | None, taps: tuple[str, ...] | None):
        self.feature_layer, self.taps = feature_layer, taps
        self.dense_inputs: list[tuple[str, jax.Array]] = []
        self.outputs: list[tuple[str, jax.Array]] = []

    def __call__(self, next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__":
            return out
        module, path = context.module, _path(context.module)
        if path == "":
            return out  # the top-level module itself
        if args and (
            path == self.feature_layer
            or (self.feature_layer is None and isinstance(module, nn.Dense))
        ):
            self.dense_inputs.append((path, args[0]))
        if self.taps is not None:
            if path in self.taps:
                self.outputs.append((path, out))
        elif isinstance(module, nn.Conv | nn.BatchNorm) and getattr(out, "ndim", 0) == 4:
            self.outputs.append((path, out))
        return out

    def features(self) -> jax.Array | None:
        if not self.dense_inputs:
            return None
        x = self.dense_inputs[-1][1]
        return x.reshape(x.shape[0], -1)

    def tap_outputs(self) -> dict[str, jax.Array]:
        if self.taps is not None:
            found = dict(self.outputs)
            return {name: found[name] for name in self.taps if name in found}
        # The rule: the last conv/BatchNorm output at each spatial resolution, in call order.
        last: dict[tuple[int, int], tuple[str, jax.Array]] = {}
        for path, out in self.outputs:
            last.pop(out.shape[1:3], None)  # re-inserted: dicts keep the latest position
            last[out.shape[1:3]] = (path, out)
        return {path: out for path, out in last.values()}


@dataclasses.dataclass(frozen=True)
class EngineModel:
    """A flax module as jaxbd's engine calls it: `apply(variables, x, train, mutable)`
    returning `(logits, features)`, with taps in "intermediates" when that is mutable.

    Hashable (it keys compiled functions). For a module that already returns `(logits,
    features)` every call goes straight to it.
    """

    module: nn.Module
    feature_layer: str | None = None
    taps: tuple[str, ...] | None = None

    @functools.cached_property
    def _takes_train(self) -> bool:
        return "train" in inspect.signature(type(self.module).__call__).parameters

    def _kwargs(self, train: bool) -> dict[str, Any]:
        return {"train": train} if self._takes_train else {}

    def _returns_pair(self, variables: PyTree, x: jax.Array) -> bool:
        """Whether the module returns `(logits, features)` (shapes only: nothing runs)."""
        out = jax.eval_shape(
            lambda v, x: self.module.apply(v, x, **self._kwargs(False)), variables, x
        )
        return isinstance(out, tuple)

    def init(self, key: jax.Array, x: jax.Array, train: bool = False) -> PyTree:
        """The module's variables for inputs like `x`."""
        return self.module.init(key, x, **self._kwargs(train))

    def apply(self, variables: PyTree, x: jax.Array, train: bool = False, mutable=False):
        """`(logits, features)` of normalized float images `x` [B, H, W, C]; with `mutable`
        (a list of collections), `((logits, features), updated collections)`."""
        collections = list(mutable) if mutable else []
        if self.taps is None and self._returns_pair(variables, x):
            # jaxbd's convention: the module returns its own features and sows its taps.
            return self.module.apply(variables, x, mutable=mutable, **self._kwargs(train))
        recorder = _Recorder(self.feature_layer, self.taps)
        inner = [c for c in collections if c != "intermediates"]
        with nn.intercept_methods(recorder):
            out = self.module.apply(variables, x, mutable=inner or False, **self._kwargs(train))
        out, updates = out if inner else (out, {})
        if isinstance(out, tuple):  # a pair-returning module with declared taps
            logits, features = out
        else:
            logits, features = out, recorder.features()
            if features is None:  # no dense layer: no features (a method needing them refuses)
                features = jnp.zeros((logits.shape[0], 0), logits.dtype)
        if not collections:
            return logits, features
        updates = dict(updates)
        if "intermediates" in collections:
            updates["intermediates"] = {k: (v,) for k, v in recorder.tap_outputs().items()}
        return (logits, features), updates


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A trained classifier: module, variables and input normalization.

    Attributes:
        module: any flax module called as `module.apply(variables, x[, train=...])` on
            normalized float images [B, H, W, C]; returning logits [B, C], or jaxbd's
            `(logits, features)`.
        params: its parameters.
        batch_stats: its BatchNorm statistics ({} without BatchNorm).
        mean: per-channel normalization mean in [0, 1] pixel units.
        std: per-channel normalization standard deviation.
        mask: optional 0/1 pruning mask like `params` (None: dense).
        feature_layer: the "/"-joined path of the module whose *input* is the penultimate
            representation; None: the last `nn.Dense` called (or the features a jaxbd
            model returns).
        taps: the "/"-joined paths of the modules whose outputs are the intermediate taps;
            None: the model's own sown outputs (jaxbd's models), else the last conv or
            BatchNorm output at each spatial resolution.
    """

    module: nn.Module
    params: PyTree
    batch_stats: PyTree = dataclasses.field(default_factory=dict)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    mask: PyTree | None = None
    feature_layer: str | None = None
    taps: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} differ in length")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.taps is not None:
            object.__setattr__(self, "taps", tuple(self.taps))

    # -- the network as the engine sees it -----------------------------------------------

    def engine_model(self) -> EngineModel:
        """The module as jaxbd's engine trains and evaluates it (`EngineModel`)."""
        return EngineModel(self.module, self.feature_layer, self.taps)

    @property
    def variables(self) -> dict[str, PyTree]:
        """{"params", "batch_stats"} for `module.apply`."""
        return {"params": self.params, "batch_stats": self.batch_stats}

    def replace(self, **changes) -> Classifier:
        """A copy with some fields changed (e.g. repaired parameters)."""
        return dataclasses.replace(self, **changes)

    def normalize(self, images: jax.Array) -> jax.Array:
        """uint8[B, H, W, C] -> float32 `(x / 255 - mean) / std` (the engine's normalization)."""
        return normalize(images, self.mean, self.std)

    # -- pure functions of uint8 images --------------------------------------------------

    def logits(self, images: jax.Array) -> jax.Array:
        """float32[B, C] in inference mode, of uint8[B, H, W, C] images."""
        return _logits(self.engine_model(), self.params, self.batch_stats, self._mean_std, images)

    def features(self, images: jax.Array) -> jax.Array:
        """float32[B, F], the penultimate representation (see `feature_layer`)."""
        return _features(self.engine_model(), self.params, self.batch_stats, self._mean_std, images)

    def intermediates(self, images: jax.Array) -> dict[str, jax.Array]:
        """The taps' outputs, name -> [B, H', W', C'] (see `taps`)."""
        return _taps(self.engine_model(), self.params, self.batch_stats, self._mean_std, images)

    def logits_fn(self) -> jax.tree_util.Partial:
        """`images -> logits` as a `jax.tree_util.Partial` whose leaves are the variables, so
        jitted callers trace them as inputs (one compilation for any weights)."""
        fn = functools.partial(_apply_logits, self.engine_model(), self._mean_std)
        return jax.tree_util.Partial(fn, self.params, self.batch_stats)

    @property
    def _mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.mean, self.std

    # -- what the model offers to methods ------------------------------------------------

    def capabilities(self, image_shape: Sequence[int]) -> dict[str, bool]:
        """Which of `CAPABILITIES` this model has, found from shapes only (no compute)."""
        model = self.engine_model()
        x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
        (_, features), sown = jax.eval_shape(
            lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]),
            self.variables,
            x,
        )
        taps = sown.get("intermediates", {})
        spatial = [
            v[0] for v in taps.values() if v[0].ndim == 4 and v[0].shape[1] * v[0].shape[2] > 1
        ]
        return {
            "features": features.shape[-1] > 0,
            "head": features.shape[-1] > 0 and self.head(int(features.shape[-1])) is not None,
            "taps": bool(spatial),
            "batchnorm": _has_batchnorm(self.params, self.batch_stats),
            "conv_bn": _has_conv_bn(model, self.params, image_shape),
        }

    def head(self, feature_dim: int) -> str | None:
        """The path of the one dense kernel [feature_dim, C] (the head), or None."""
        found = [
            "/".join(_key(k) for k in path[:-1])
            for path, leaf in jax.tree_util.tree_flatten_with_path(self.params)[0]
            if path
            and _key(path[-1]) == "kernel"
            and jnp.ndim(leaf) == 2
            and leaf.shape[0] == feature_dim
        ]
        return found[0] if len(found) == 1 else None

    def require(self, needs: Sequence[str], image_shape: Sequence[int], who: str) -> None:
        """Raises `MissingCapabilityError` (one line, naming `who` and what is missing) unless the
        model has every capability in `needs`."""
        unknown = sorted(set(needs) - set(CAPABILITIES))
        if unknown:
            raise ValueError(f"{who}: unknown model needs {unknown}; known: {list(CAPABILITIES)}")
        if not needs:
            return
        have = self.capabilities(image_shape)
        missing = [n for n in needs if not have[n]]
        if missing:
            raise MissingCapabilityError(
                f"{who} needs {', '.join(_NEED_TEXT[n] for n in missing)}, which "
                f"{type(self.module).__name__} lacks"
            )


_NEED_TEXT = {
    "features": "a feature tap (the input of a dense head, or Classifier(feature_layer=...))",
    "head": "a dense head whose input is the features",
    "taps": "intermediate 4-D taps larger than 1x1 (Classifier(taps=...))",
    "batchnorm": "BatchNorm layers",
    "conv_bn": "a conv followed by its own BatchNorm",
}


def _key(k) -> str:
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def _has_batchnorm(params: PyTree, batch_stats: PyTree) -> bool:
    stats = {
        "/".join(_key(k) for k in p[:-1])
        for p, _ in jax.tree_util.tree_flatten_with_path(batch_stats)[0]
        if p and _key(p[-1]) == "mean"
    }
    return any(
        "/".join(_key(k) for k in p[:-1]) in stats
        for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
        if p and _key(p[-1]) == "scale"
    )


def _has_conv_bn(model: EngineModel, params: PyTree, image_shape: Sequence[int]) -> bool:
    found = []  # ("conv", its output) and ("bn", its input), in call order

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            if isinstance(context.module, nn.Conv):
                found.append(("conv", out))
            elif isinstance(context.module, nn.BatchNorm) and args:
                found.append(("bn", args[0]))
        return out

    def trace():
        with nn.intercept_methods(interceptor):
            return model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)

    jax.eval_shape(trace)
    convs = [out for kind, out in found if kind == "conv"]
    return any(kind == "bn" and any(x is c for c in convs) for kind, x in found)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _logits(model, params, batch_stats, mean_std, images):
    return _apply_logits(model, mean_std, params, batch_stats, images)


def _apply_logits(model, mean_std, params, batch_stats, images):
    x = normalize(images, *mean_std)
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
    return logits.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _features(model, params, batch_stats, mean_std, images):
    x = normalize(images, *mean_std)
    _, features = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)
    return features.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _taps(model, params, batch_stats, mean_std, images):
    x = normalize(images, *mean_std)
    v = {"params": params, "batch_stats": batch_stats}
    _, sown = model.apply(v, x, train=False, mutable=["intermediates"])
    return {k: val[0] for k, val in sown.get("intermediates", {}).items()}
