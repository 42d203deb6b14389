"""The decoded-array cache: uncompressed `.npz` files keyed by the content of their source.

Decoded arrays are cached under `$JAXBD_CACHE` (or `~/.cache/jaxbd`), keyed by the content of
the source (SHA-256 of the archives; relative paths, sizes and modification times of plain
folders), so a second load skips decoding. A cache file that cannot be read is reported with a
warning and rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np

from jaxbd import files
from jaxbd.data.cifar10.decoded import Decoded, check_image_shape
from jaxbd.data.dataset import DataError

# Bump when the decoded arrays for the same source would change, to invalidate old caches.
CACHE_VERSION = 1


class Cache:
    """`.npz` files of decoded arrays under `<cache_dir>/cifar10/`, written atomically."""

    def __init__(self, cache_dir: str | os.PathLike | None):
        if cache_dir is None:
            cache_dir = os.environ.get("JAXBD_CACHE") or Path.home() / ".cache" / "jaxbd"
        self.dir = Path(cache_dir).expanduser() / "cifar10"

    def file(self, key: str) -> Path:
        return self.dir / f"cifar10-{key}.npz"

    def load(self, key: str) -> Decoded | None:
        """The cached arrays for `key`, or None (with a warning if the file is unusable)."""
        file = self.file(key)
        if not file.is_file():
            return None
        try:
            with np.load(file, allow_pickle=False) as npz:
                decoded = Decoded(
                    train_images=npz["train_images"],
                    train_labels=npz["train_labels"],
                    test_images=npz["test_images"],
                    test_labels=npz["test_labels"],
                    form=str(npz["form"]),
                    source=str(npz["source"]),
                    cache_file=file,
                )
            check_image_shape(decoded.train_images, file)
            check_image_shape(decoded.test_images, file)
            decoded.to_splits("")  # validates labels and sizes before anyone relies on them
            return decoded
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, DataError) as e:
            warnings.warn(
                f"ignoring unreadable CIFAR-10 cache file {file} ({type(e).__name__}: {e}); "
                "decoding the source again",
                RuntimeWarning,
                stacklevel=_caller_level(),
            )
            return None

    def save(self, key: str, decoded: Decoded, source: str) -> None:
        """Writes the cache file via a temporary file and a rename; warns if it cannot."""
        file = self.file(key)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(file) as f:
                # Uncompressed: loading 180 MB of raw arrays is faster than inflating them.
                np.savez(
                    f,
                    train_images=decoded.train_images,
                    train_labels=decoded.train_labels,
                    test_images=decoded.test_images,
                    test_labels=decoded.test_labels,
                    form=np.array(decoded.form),
                    source=np.array(source),
                )
        except OSError as e:
            warnings.warn(
                f"could not write the CIFAR-10 cache file {file} ({e}); the next load will "
                "decode again",
                RuntimeWarning,
                stacklevel=_caller_level(),
            )


def _caller_level() -> int:
    """The `stacklevel` of the first frame outside jaxbd: a cache warning is attributed to
    the code that asked for the data, whatever route inside jaxbd led to the cache."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("jaxbd"):
        frame, level = frame.f_back, level + 1
    return level


def atomic_write(dest: Path) -> contextlib.AbstractContextManager[io.BufferedWriter]:
    """A binary file at a temporary name in `dest`'s folder, renamed onto `dest` on success
    (`jaxbd.files.atomic_write` in binary mode).

    Readers never see a half-written file, and concurrent writers of the same file are safe:
    each writes its own temporary file and the last rename wins.
    """
    return files.atomic_write(dest, "wb")


def key(payload: dict) -> str:
    """A short, stable hash of a JSON-able description of a source's content."""
    blob = json.dumps({"version": CACHE_VERSION, **payload}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def archive_key(kind: str, digests: dict[str, str]) -> str:
    """The key of archives with these SHA-256 digests (by role), whatever their location."""
    # Keyed by content only, so the same archive found by path or downloaded into the cache
    # shares one decode.
    return key({"kind": kind, "sha256": digests})


TFDS_KEY = key({"kind": "tfds"})
