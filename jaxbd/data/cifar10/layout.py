"""Recognising which CIFAR-10 layout a local path holds, and keying plain folders' content."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from jaxbd.data.cifar10.formats import (
    BINARY_ARCHIVE,
    BINARY_DIR,
    IMAGE_ARCHIVE_SUFFIXES,
    PYTHON_ARCHIVE,
    PYTHON_DIR,
    SPLITS,
    TEST_BATCH,
)
from jaxbd.data.dataset import DataError


@dataclasses.dataclass(frozen=True)
class Layout:
    """A recognised CIFAR-10 layout.

    Attributes:
        kind: "archive" (python or binary tar, sniffed when read), "python-dir",
            "binary-dir", "image-archives" or "image-dirs".
        files: the files or folders it reads, by role ("archive", "dir", "train", "test").
        description: how the source string names it.
    """

    kind: str
    files: dict[str, Path]
    description: str


_LOOKED_FOR = (
    f"{PYTHON_ARCHIVE}, {PYTHON_DIR}/, {BINARY_ARCHIVE}, {BINARY_DIR}/, train.tgz + test.tgz, "
    f"train/ + test/ class folders, or the {PYTHON_DIR} or {BINARY_DIR} files themselves"
)


def find_layout(path: Path) -> Layout:
    """Recognises what `path` holds, or raises a DataError saying what was looked for."""
    if not path.exists():
        raise DataError(
            f"CIFAR-10 path {path} does not exist; expected a folder with {_LOOKED_FOR}, "
            "or the path of an official archive"
        )
    if path.is_file():
        return Layout("archive", {"archive": path}, "archive")
    candidates = [
        (path / PYTHON_ARCHIVE, "archive"),
        (path / PYTHON_DIR, "python-dir"),
        (path / BINARY_ARCHIVE, "archive"),
        (path / BINARY_DIR, "binary-dir"),
    ]
    for candidate, kind in candidates:
        if kind == "archive" and candidate.is_file():
            return Layout(kind, {"archive": candidate}, "archive")
        if kind != "archive" and candidate.is_dir():
            return Layout(kind, {"dir": candidate}, f"{candidate.name}/ folder")
    if (path / "data_batch_1").is_file() and (path / TEST_BATCH).is_file():
        return Layout("python-dir", {"dir": path}, f"{PYTHON_DIR}/ folder")
    if (path / "data_batch_1.bin").is_file() and (path / f"{TEST_BATCH}.bin").is_file():
        return Layout("binary-dir", {"dir": path}, f"{BINARY_DIR}/ folder")

    archives = {split: _first_file(path, split, IMAGE_ARCHIVE_SUFFIXES) for split in SPLITS}
    if all(archives.values()):
        return Layout("image-archives", archives, "image-folder .tgz")
    dirs = {split: path / split for split in SPLITS}
    if all(d.is_dir() for d in dirs.values()):
        return Layout("image-dirs", dirs, "image folders")
    for split, other in (("train", "test"), ("test", "train")):
        if archives[split] or dirs[split].is_dir():
            raise DataError(
                f"CIFAR-10 folder {path} has {split} images but no {other} images: expected "
                f"{other}.tgz or an {other}/ folder next to "
                f"{(archives[split] or dirs[split]).name}"
            )
    found = sorted(p.name for p in path.iterdir())
    shown = ", ".join(found[:10]) + (f", ... ({len(found)} entries)" if len(found) > 10 else "")
    raise DataError(
        f"no CIFAR-10 layout recognised in {path}: looked for {_LOOKED_FOR}; found "
        f"{shown or 'an empty folder'}"
    )


def _first_file(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    """The first existing `folder/<stem><suffix>`, or None."""
    return next((f for s in suffixes if (f := folder / f"{stem}{s}").is_file()), None)


def listing(folders: dict[str, Path]) -> list:
    """Relative paths, sizes and modification times of every file under `folders`.

    A cheap content key for plain folders (hashing 60k small files would cost as much as
    decoding them): any added, removed, resized or rewritten file changes it.
    """
    entries = []
    for role, folder in sorted(folders.items()):
        for root, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for name in sorted(filenames):
                st = os.stat(os.path.join(root, name))
                rel = os.path.relpath(os.path.join(root, name), folder)
                entries.append((role, rel, st.st_size, st.st_mtime_ns))
    return entries
