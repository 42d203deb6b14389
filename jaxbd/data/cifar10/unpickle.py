"""A restricted unpickler for the official python batches.

The python batches are pickles, and a pickle can call any importable callable. CIFAR-10
batches need nothing but NumPy's array reconstruction (and, for Python 3 pickles of bytes,
`_codecs.encode(..., "latin1")`), so this unpickler resolves only those names and refuses the
rest.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections.abc import Callable

import numpy as np


def load_batch(blob: bytes) -> object:
    """Unpickles one batch file (bytes keys stay bytes).

    Raises:
        pickle.UnpicklingError: for any global outside the allowed NumPy names; damaged bytes
            can raise nearly any other exception too.
    """
    return _BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()


def _numpy_global(module: str, name: str):
    """`module.name`, with NumPy 1.x's `numpy.core` and NumPy 2's `numpy._core` interchangeable.

    Official batches name `numpy.core`, which NumPy 2 still resolves but with a deprecation
    warning; newer pickles name `numpy._core`, which NumPy 1.x lacks.
    """
    try:
        return getattr(importlib.import_module(module.replace("numpy.core", "numpy._core")), name)
    except ImportError:  # NumPy 1.x
        return getattr(importlib.import_module(module.replace("numpy._core", "numpy.core")), name)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles of bytes (protocol 2) call _codecs.encode(str, "latin1"); allow only that.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_PICKLE_GLOBALS: dict[tuple[str, str], Callable[[], object]] = {
    **{
        (module, name): (lambda m=module, n=name: _numpy_global(m, n))
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    },
    **{
        (module, "_frombuffer"): (lambda m=module: _numpy_global(m, "_frombuffer"))
        for module in ("numpy.core.numeric", "numpy._core.numeric")
    },
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches, resolving only the NumPy names that array pickles use."""

    def find_class(self, module, name):
        factory = _PICKLE_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: not part of a CIFAR-10 batch pickle"
            )
        return factory()
