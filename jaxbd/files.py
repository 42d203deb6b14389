"""Atomic file writes: a reader never sees a half-written file, and a crash leaves the old
content (or none), never a torn one."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from jaxbd.types import jsonable

TMP_PREFIX = ".tmp-"
"""Prefix of the temporary files written beside their destination (a run directory ignores
them when it checks for foreign files)."""


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "w", *, like: str | None = None, private: bool = True
) -> Iterator[IO]:
    """A file opened at a temporary name beside `path`, renamed onto `path` on success.

    Concurrent writers of one file are safe (each writes its own temporary file; the last
    rename wins); on an exception the temporary file is removed and `path` is untouched.

    Args:
        path: the destination.
        mode: "w" (text) or "wb" (binary).
        like: an existing file whose permission bits the new file gets (a temporary file is
            created private).
        private: True: the new file is readable by its owner only (0o600), as a temporary
            file is created; False: it gets the bits `open()` gives a new file (0o666 less
            the umask). `like` takes precedence.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _temporary(directory, private)
    try:
        with os.fdopen(fd, mode, **({"newline": ""} if mode == "w" else {})) as f:
            yield f
        if like is not None and os.path.exists(like):
            shutil.copymode(like, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _temporary(directory: str, private: bool) -> tuple[int, str]:
    """A new temporary file in `directory`, opened for writing: (descriptor, path)."""
    if private:
        return tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:  # as mkstemp, but created 0o666 so that the kernel applies the umask
        tmp = os.path.join(directory, TMP_PREFIX + secrets.token_hex(6))
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def write_text(
    path: str | os.PathLike, text: str, *, like: str | None = None, private: bool = True
) -> None:
    """Writes `text` atomically (`private`: as in `atomic_write`)."""
    with atomic_write(path, like=like, private=private) as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` (made `jsonable`) as indented, key-sorted JSON, atomically."""
    write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Writes one key-sorted JSON object per line, atomically."""
    write_text(path, "".join(json.dumps(jsonable(r), sort_keys=True) + "\n" for r in rows))


def write_csv(
    path: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    private: bool = True,
) -> None:
    """Writes a CSV table (a header, then one line per row), atomically (`private`: as in
    `atomic_write`)."""
    with atomic_write(path, private=private) as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """`np.savez` of `arrays`, atomically."""
    import numpy as np

    with atomic_write(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
