"""CIFAR-10 as uint8 arrays in canonical order, from a local copy, a download, or tfds.

Sources (SPEC §6), tried in this order by `source="auto"`:

1. A local `path` holding one of
   - the official python archive `cifar-10-python.tar.gz` (or the path of the archive
     itself, or its extracted `cifar-10-batches-py/` folder),
   - the official binary archive `cifar-10-binary.tar.gz` (or `cifar-10-batches-bin/`),
   - image folders `train/<class>/*.{png,jpg}` and `test/<class>/*`, as directories or packed
     as `train.tgz` and `test.tgz`.
   A `SHA256SUMS` file next to the archives is checked before anything is decoded.
2. A decode cached by an earlier run (see below).
3. The official archive already downloaded into the cache directory.
4. tensorflow-datasets, when installed.
5. The official archive, downloaded once into the cache directory and checked against its
   known SHA-256.

Canonical order is the official order (data batches 1–5, then records in file order) for the
archives, id order for tfds (which numbers the official order), and for image folders: by
class in CIFAR-10 label order, then by file name (what `../shared/data/cifar10` documents).

Decoded arrays are cached as an uncompressed `.npz` under `$JAXBD_CACHE` (or
`~/.cache/jaxbd`), keyed by the content of the source (SHA-256 of the archives; relative
paths, sizes and modification times of plain folders), so a second load skips decoding. A
cache file that cannot be read is reported with a warning and rebuilt.

Archives are read in memory, member by member; nothing is extracted to disk, so member names
cannot escape any directory. The python batches are pickles: they are read with an
unpickler that only resolves the few NumPy names the official files use.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib.util
import inspect
import io
import itertools
import json
import logging
import marshal
import os
import pickle
import posixpath
import string
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from jaxbd.data.dataset import DataError, Dataset, DataSplits

logger = logging.getLogger(__name__)

CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (32, 32, 3)

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
OFFICIAL_BATCH_SIZE = 10_000  # 5 data batches (50,000 train images) and a test batch

SOURCES = ("auto", "path", "download", "tfds")

PYTHON_ARCHIVE = "cifar-10-python.tar.gz"
PYTHON_DIR = "cifar-10-batches-py"
BINARY_ARCHIVE = "cifar-10-binary.tar.gz"
BINARY_DIR = "cifar-10-batches-bin"
CHECKSUM_FILE = "SHA256SUMS"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_SPLITS = ("train", "test")
_IMAGE_ARCHIVE_SUFFIXES = (".tgz", ".tar.gz")
_BINARY_RECORD = 1 + 32 * 32 * 3  # one label byte, then 3072 pixel bytes (R, G, B planes)

# Bump when the decoded arrays for the same source would change, to invalidate old caches.
_CACHE_VERSION = 1
# Decode in worker processes only with this many images and cores; below, the workers'
# start-up and transfer overhead costs about as much as it saves (see `_decode_images`).
_PARALLEL_DECODE_MIN = 4096
_PARALLEL_DECODE_MIN_CORES = 4

# Errors that reading a damaged gzip/tar stream raises (gzip.BadGzipFile is an OSError).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


# --------------------------------------------------------------------------------------------
# Public entry point.
# --------------------------------------------------------------------------------------------


def load_cifar10(
    path: str | os.PathLike | None = None,
    *,
    source: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    url: str = OFFICIAL_URL,
    expected_sha256: str = OFFICIAL_SHA256,
    tfds_data_dir: str | os.PathLike | None = None,
) -> DataSplits:
    """Loads CIFAR-10 train and test sets in canonical order.

    Args:
        path: a local copy: a folder holding one of the recognised layouts (see the module
            docstring) or the path of an official archive. Used by `source="path"` and, when
            given, by `source="auto"`.
        source: "auto" (path if given, else a cached decode, else a downloaded archive in the
            cache, else tfds if installed, else download), "path", "download" or "tfds".
        cache_dir: where decoded arrays and downloads are kept; None: `$JAXBD_CACHE` or
            `~/.cache/jaxbd`. Files go in its `cifar10/` subfolder.
        url: where `source="download"` fetches the python-format archive from.
        expected_sha256: the SHA-256 the downloaded archive must have.
        tfds_data_dir: `data_dir` passed to `tfds.load` (None: tfds's default).

    Returns:
        DataSplits with `train.images: uint8[50000, 32, 32, 3]`, `test.images:
        uint8[10000, 32, 32, 3]` (other sizes for non-official local copies), int32 labels
        in [0, 10), the CIFAR-10 class names, and the source recorded in `source`.

    Raises:
        DataError: on a missing path, an unrecognised layout, a corrupt or truncated archive,
            a checksum mismatch, a wrong image shape, a label outside [0, 10), a missing or
            unknown class folder, an undecodable image, or an unavailable source.
    """
    if source not in SOURCES:
        raise DataError(f"unknown CIFAR-10 source {source!r}; expected one of {SOURCES}")
    expected_sha256 = expected_sha256.lower()
    cache = _Cache(cache_dir)
    if source == "path" or (source == "auto" and path is not None):
        if path is None:
            raise DataError("source='path' needs a path to a local CIFAR-10 copy, got None")
        return _load_path(Path(path).expanduser().absolute(), cache)
    if path is not None:
        raise DataError(
            f"path={str(path)!r} is only used with source 'path' or 'auto', got "
            f"source={source!r}; drop one of them"
        )
    if source == "download":
        return _load_download(url, expected_sha256, cache)
    if source == "tfds":
        return _load_tfds(tfds_data_dir, cache)
    # source == "auto" without a path.
    for key in (_archive_key("archive", {"archive": expected_sha256}), _TFDS_KEY):
        if (hit := cache.load(key)) is not None:
            return hit.to_splits(hit.source)  # as recorded by the load that decoded it
    if _download_target(url, cache).is_file():
        return _load_download(url, expected_sha256, cache)
    if importlib.util.find_spec("tensorflow_datasets") is not None:
        return _load_tfds(tfds_data_dir, cache)
    return _load_download(url, expected_sha256, cache)


# --------------------------------------------------------------------------------------------
# Decoded-array cache.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Decoded:
    """Decoded arrays, what they were decoded from, and whether they came from the cache.

    Attributes:
        train_images: uint8[N, 32, 32, 3].
        train_labels: int32[N].
        test_images: uint8[M, 32, 32, 3].
        test_labels: int32[M].
        form: what was decoded, e.g. "python archive" or "image-folder .tgz". It depends on
            the content only, so it is cached with the arrays.
        source: the full source string of the load that decoded the arrays (set on cache
            reads; a new load records its own origin).
        cache_file: the cache file the arrays were read from, or None if just decoded.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    form: str
    source: str = ""
    cache_file: Path | None = None

    def to_splits(self, source: str) -> DataSplits:
        if self.cache_file is not None:
            source = f"{source}; cached {self.cache_file}"
        kwargs = dict(num_classes=NUM_CLASSES, class_names=CLASS_NAMES, source=source)
        train = Dataset(self.train_images, self.train_labels, **kwargs)
        test = Dataset(self.test_images, self.test_labels, **kwargs)
        return DataSplits(train=train, test=test, source=source)


class _Cache:
    """`.npz` files of decoded arrays under `<cache_dir>/cifar10/`, written atomically."""

    def __init__(self, cache_dir: str | os.PathLike | None):
        if cache_dir is None:
            cache_dir = os.environ.get("JAXBD_CACHE") or Path.home() / ".cache" / "jaxbd"
        self.dir = Path(cache_dir).expanduser() / "cifar10"

    def file(self, key: str) -> Path:
        return self.dir / f"cifar10-{key}.npz"

    def load(self, key: str) -> _Decoded | None:
        """The cached arrays for `key`, or None (with a warning if the file is unusable)."""
        file = self.file(key)
        if not file.is_file():
            return None
        try:
            with np.load(file, allow_pickle=False) as npz:
                decoded = _Decoded(
                    train_images=npz["train_images"],
                    train_labels=npz["train_labels"],
                    test_images=npz["test_images"],
                    test_labels=npz["test_labels"],
                    form=str(npz["form"]),
                    source=str(npz["source"]),
                    cache_file=file,
                )
            _check_image_shape(decoded.train_images, file)
            _check_image_shape(decoded.test_images, file)
            decoded.to_splits("")  # validates labels and sizes before anyone relies on them
            return decoded
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, DataError) as e:
            warnings.warn(
                f"ignoring unreadable CIFAR-10 cache file {file} ({type(e).__name__}: {e}); "
                "decoding the source again",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    def save(self, key: str, decoded: _Decoded, source: str) -> None:
        """Writes the cache file via a temporary file and a rename; warns if it cannot."""
        file = self.file(key)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with _atomic_write(file) as f:
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
                stacklevel=3,
            )


@contextlib.contextmanager
def _atomic_write(dest: Path) -> Iterator[io.BufferedWriter]:
    """A binary file at a temporary name in `dest`'s folder, renamed onto `dest` on success.

    Readers never see a half-written file, and concurrent writers of the same file are safe:
    each writes its own temporary file and the last rename wins.
    """
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)  # no-op after the rename


def _key(payload: dict) -> str:
    """A short, stable hash of a JSON-able description of a source's content."""
    blob = json.dumps({"version": _CACHE_VERSION, **payload}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _archive_key(kind: str, digests: dict[str, str]) -> str:
    # Archives are keyed by content only, so the same archive found by path or downloaded
    # into the cache shares one decode.
    return _key({"kind": kind, "sha256": digests})


_TFDS_KEY = _key({"kind": "tfds"})


# --------------------------------------------------------------------------------------------
# Local paths: layout detection and checksums.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Layout:
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


def _find_layout(path: Path) -> _Layout:
    """Recognises what `path` holds, or raises a DataError saying what was looked for."""
    if not path.exists():
        raise DataError(
            f"CIFAR-10 path {path} does not exist; expected a folder with {_LOOKED_FOR}, "
            "or the path of an official archive"
        )
    if path.is_file():
        return _Layout("archive", {"archive": path}, "archive")
    candidates = [
        (path / PYTHON_ARCHIVE, "archive"),
        (path / PYTHON_DIR, "python-dir"),
        (path / BINARY_ARCHIVE, "archive"),
        (path / BINARY_DIR, "binary-dir"),
    ]
    for candidate, kind in candidates:
        if kind == "archive" and candidate.is_file():
            return _Layout(kind, {"archive": candidate}, "archive")
        if kind != "archive" and candidate.is_dir():
            return _Layout(kind, {"dir": candidate}, f"{candidate.name}/ folder")
    if (path / "data_batch_1").is_file() and (path / TEST_BATCH).is_file():
        return _Layout("python-dir", {"dir": path}, f"{PYTHON_DIR}/ folder")
    if (path / "data_batch_1.bin").is_file() and (path / f"{TEST_BATCH}.bin").is_file():
        return _Layout("binary-dir", {"dir": path}, f"{BINARY_DIR}/ folder")

    archives = {split: _first_file(path, split, _IMAGE_ARCHIVE_SUFFIXES) for split in _SPLITS}
    if all(archives.values()):
        return _Layout("image-archives", archives, "image-folder .tgz")
    dirs = {split: path / split for split in _SPLITS}
    if all(d.is_dir() for d in dirs.values()):
        return _Layout("image-dirs", dirs, "image folders")
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


def _read_checksums(folder: Path) -> dict[str, str]:
    """`{file name: sha256}` from `folder/SHA256SUMS` (sha256sum format), or {} if absent."""
    file = folder / CHECKSUM_FILE
    if not file.is_file():
        return {}
    sums = {}
    for lineno, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")  # "*" marks binary mode in sha256sum output
        if len(digest) != 64 or not name or not all(c in string.hexdigits for c in digest):
            raise DataError(f"{file} line {lineno} is not '<64 hex digits>  <file name>': {line!r}")
        sums[posixpath.basename(name)] = digest.lower()
    return sums


def _sha256(file: Path) -> str:
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _load_path(path: Path, cache: _Cache) -> DataSplits:
    """Loads a local copy, from the cache when its content was decoded before."""
    layout = _find_layout(path)
    digests, verified = {}, False
    if layout.kind in ("archive", "image-archives"):
        # Hash the archives even on a cache hit: the digest is the cache key, and a copy that
        # no longer matches its SHA256SUMS must fail rather than be served from the cache.
        digests = {role: _sha256(file) for role, file in layout.files.items()}
        verified = _verify_checksums(layout.files, digests)
        verified |= digests.get("archive") == OFFICIAL_SHA256
        key = _archive_key(layout.kind, digests)
    else:
        key = _key({"kind": layout.kind, "listing": _listing(layout.files)})
    decoded = cache.load(key)
    if decoded is None:
        if layout.kind == "archive":
            decoded = _decode_archive(layout.files["archive"], digests["archive"])
        elif layout.kind == "image-archives":
            decoded = _decode_image_folders(layout.files, _collect_archive, layout.description)
        elif layout.kind == "image-dirs":
            decoded = _decode_image_folders(layout.files, _collect_dir, layout.description)
        else:
            binary = layout.kind == "binary-dir"
            batches = _read_dir_batches(layout.files["dir"], binary=binary)
            decoded = _decode_batches(batches, layout.description)
    source = f"cifar10:path:{path} ({decoded.form}{', sha256 verified' if verified else ''})"
    if decoded.cache_file is None:
        cache.save(key, decoded, source)
    return decoded.to_splits(source)


def _verify_checksums(files: dict[str, Path], digests: dict[str, str]) -> bool:
    """Checks each archive against a SHA256SUMS next to it; True if all were listed and match."""
    all_listed = True
    for role, file in files.items():
        expected = _read_checksums(file.parent).get(file.name)
        if expected is None:
            all_listed = False
        elif expected != digests[role]:
            raise DataError(
                f"checksum mismatch for {file}: {file.parent / CHECKSUM_FILE} expects sha256 "
                f"{expected}, the file has {digests[role]}; the file is corrupt, incomplete or "
                "a different version — replace it"
            )
    return all_listed


def _listing(folders: dict[str, Path]) -> list:
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


# --------------------------------------------------------------------------------------------
# Official formats: python pickles and binary records.
# --------------------------------------------------------------------------------------------


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
    """Unpickles CIFAR batches, resolving only the NumPy names that array pickles use.

    A pickle can run any importable callable; CIFAR batches need none but NumPy's array
    reconstruction, so everything else is refused.
    """

    def find_class(self, module, name):
        factory = _PICKLE_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: not part of a CIFAR-10 batch pickle"
            )
        return factory()


def _parse_python_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch → (uint8[n, 32, 32, 3], int64[n]); `where` names it in errors."""
    try:
        batch = _BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as e:  # Unpickling damaged bytes can raise nearly anything.
        raise DataError(f"cannot unpickle CIFAR-10 batch {where}: {type(e).__name__}: {e}") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(
            f"CIFAR-10 batch {where} is not a dict with b'data' and b'labels'; found {found}"
        )
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(
            f"unexpected image data in CIFAR-10 batch {where}: expected uint8[n, 3072] "
            f"(3 x 32 x 32 per row), found {type(data).__name__} "
            f"{getattr(data, 'dtype', '')}{list(getattr(data, 'shape', []))}"
        )
    if data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"unexpected image shape in CIFAR-10 batch {where}: expected rows of 3072 values "
            f"(3 x 32 x 32), found {data.shape[1]} per row"
        )
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"CIFAR-10 batch {where} has {data.shape[0]} images but labels of shape "
            f"{labels.shape} and dtype {labels.dtype}; expected {data.shape[0]} integers"
        )
    # Rows are channel planes (R, G, B), each 32 x 32 in row-major order.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _parse_binary_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch (records of 1 label byte + 3072 pixel bytes) → images, labels."""
    if len(blob) % _BINARY_RECORD:
        raise DataError(
            f"CIFAR-10 binary batch {where} has {len(blob)} bytes, not a multiple of the "
            f"{_BINARY_RECORD}-byte record (1 label byte + 3 x 32 x 32 pixels); truncated?"
        )
    records = np.frombuffer(blob, np.uint8).reshape(-1, _BINARY_RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, records[:, 0].astype(np.int64)


def _batch_names(binary: bool) -> tuple[str, ...]:
    suffix = ".bin" if binary else ""
    return tuple(f"{name}{suffix}" for name in (*TRAIN_BATCHES, TEST_BATCH))


@dataclasses.dataclass(frozen=True)
class _Batches:
    """Raw batch files of an official-format copy: name → bytes, with their origin."""

    blobs: dict[str, bytes]
    binary: bool
    where: str  # the archive or folder, for error messages
    official: bool = False  # the SHA-256-verified official archive: sizes are known


def _decode_batches(batches: _Batches, form: str) -> _Decoded:
    """Decodes the five data batches and the test batch, in official order."""
    parse = _parse_binary_batch if batches.binary else _parse_python_batch
    parts = {}
    for name in _batch_names(batches.binary):
        where = f"{name} in {batches.where}"
        images, labels = parse(batches.blobs[name], where)
        _check_labels(labels, where)
        if batches.official and len(labels) != OFFICIAL_BATCH_SIZE:
            raise DataError(
                f"{where} has {len(labels)} images; the official archive's batches have "
                f"{OFFICIAL_BATCH_SIZE}"
            )
        parts[name] = (images, labels)
    train_names = _batch_names(batches.binary)[:-1]
    test_images, test_labels = parts[_batch_names(batches.binary)[-1]]
    return _Decoded(
        train_images=np.ascontiguousarray(np.concatenate([parts[n][0] for n in train_names])),
        train_labels=np.concatenate([parts[n][1] for n in train_names]).astype(np.int32),
        test_images=np.ascontiguousarray(test_images),
        test_labels=test_labels.astype(np.int32),
        form=form,
    )


def _read_dir_batches(folder: Path, *, binary: bool) -> _Batches:
    names = _batch_names(binary)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 folder {folder} lacks {', '.join(missing)}: expected the batch files "
            f"{', '.join(names)}"
        )
    return _Batches({n: (folder / n).read_bytes() for n in names}, binary, str(folder))


def _iter_tar(archive: Path) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Yields (member, bytes) in archive order (bytes None for non-files), in memory.

    Raises:
        DataError: when the archive is not a tar file, or is truncated or corrupt.
    """
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                data = tar.extractfile(member).read() if member.isfile() else None
                yield member, data
    except _ARCHIVE_ERRORS as e:
        raise DataError(
            f"cannot read archive {archive}: {type(e).__name__}: {e}; the file is corrupt or "
            "truncated (expected a complete .tar.gz)"
        ) from e


def _member_parts(name: str) -> list[str]:
    """Path components of a tar member name, without "." components."""
    return [p for p in name.split("/") if p not in ("", ".")]


def _decode_archive(archive: Path, digest: str) -> _Decoded:
    """Decodes an official-format archive (python or binary, recognised by its folder name)."""
    official = digest == OFFICIAL_SHA256
    blobs: dict[str, bytes] = {}
    folder = None
    for member, data in _iter_tar(archive):
        parts = _member_parts(member.name)
        if folder is None and parts and parts[0] in (PYTHON_DIR, BINARY_DIR):
            folder = parts[0]
        if data is not None and len(parts) == 2 and parts[0] == folder:
            blobs[parts[1]] = data
    if folder is None:
        raise DataError(
            f"{archive} is not a CIFAR-10 archive: expected members under {PYTHON_DIR}/ (python "
            f"format) or {BINARY_DIR}/ (binary format), found none"
        )
    binary = folder == BINARY_DIR
    missing = [n for n in _batch_names(binary) if n not in blobs]
    if missing:
        raise DataError(
            f"archive {archive} lacks {', '.join(f'{folder}/{n}' for n in missing)}: expected "
            f"the five data batches and the test batch"
        )
    if official:
        form = "official python archive"
    else:
        form = "binary archive" if binary else "python archive"
    return _decode_batches(_Batches(blobs, binary, str(archive), official=official), form)


# --------------------------------------------------------------------------------------------
# Image folders.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ImageFile:
    label: int
    name: str  # file name within its class folder: the sort key after the label
    where: str  # archive member or file path, for error messages
    data: bytes


def _class_label(class_name: str, where: str) -> int:
    if class_name not in CLASS_NAMES:
        raise DataError(
            f"unknown class folder {class_name!r} ({where}): expected the CIFAR-10 classes "
            f"{', '.join(CLASS_NAMES)}"
        )
    return CLASS_NAMES.index(class_name)


def _classify(parts: list[str], split: str, where: str) -> tuple[int, str] | None:
    """(label, file name) of the image file `<split>/<class>/<name>`; None for hidden files."""
    if any(p.startswith(".") for p in parts):
        return None  # .DS_Store, ._AppleDouble files and the like
    if len(parts) != 3 or parts[0] != split:
        raise DataError(
            f"unexpected file {where}: expected {split}/<class>/<image> with <class> one of "
            f"{', '.join(CLASS_NAMES)}"
        )
    label = _class_label(parts[1], where)
    if not parts[2].lower().endswith(IMAGE_EXTENSIONS):
        raise DataError(
            f"unexpected file {where}: expected images ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    return label, parts[2]


def _collect_archive(archive: Path, split: str) -> list[_ImageFile]:
    """The images of `split` in a `<split>.tgz`, read in memory, in archive order."""
    files = []
    for member, data in _iter_tar(archive):
        parts = _member_parts(member.name)
        where = f"{member.name} in {archive}"
        if member.isdir():
            if len(parts) == 2 and parts[0] == split and not parts[1].startswith("."):
                _class_label(parts[1], where)  # an unknown class folder fails even if empty
        elif data is None:
            raise DataError(f"unexpected member {where}: links and devices are not supported")
        elif (label_name := _classify(parts, split, where)) is not None:
            files.append(_ImageFile(*label_name, where=where, data=data))
    return files


def _collect_dir(folder: Path, split: str) -> list[_ImageFile]:
    """The images of `split` in a `<split>/` folder, in sorted order."""
    files = []
    for class_dir in sorted(folder.iterdir()):
        if class_dir.name.startswith("."):
            continue
        if not class_dir.is_dir():
            raise DataError(f"unexpected file {class_dir}: expected only class folders in {folder}")
        for file in sorted(class_dir.iterdir()):
            parts = [split, class_dir.name, file.name]
            if (label_name := _classify(parts, split, str(file))) is not None:
                if not file.is_file():
                    raise DataError(f"unexpected non-file {file}: expected an image file")
                files.append(_ImageFile(*label_name, where=str(file), data=file.read_bytes()))
    return files


def _assemble(files: list[_ImageFile], split: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Canonical order (label, then file name), class check, decode → images, labels."""
    files = sorted(files, key=lambda f: (f.label, f.name))
    for a, b in itertools.pairwise(files):
        if (a.label, a.name) == (b.label, b.name):
            raise DataError(f"duplicate image {b.where} (also {a.where})")
    present = {f.label for f in files}
    missing = [CLASS_NAMES[c] for c in range(NUM_CLASSES) if c not in present]
    if missing:
        raise DataError(
            f"{where} has no images for class folder(s) {', '.join(missing)}: expected "
            f"{split}/<class>/ folders for all of {', '.join(CLASS_NAMES)}"
        )
    images = _decode_images([f.data for f in files], [f.where for f in files])
    labels = np.array([f.label for f in files], np.int32)
    return images, labels


def _decode_image_folders(
    sources: dict[str, Path],
    collect: Callable[[Path, str], list[_ImageFile]],
    form: str,
) -> _Decoded:
    """Decodes train and test image folders; `collect` reads one split's files."""
    arrays = []
    for split in _SPLITS:
        arrays += _assemble(collect(sources[split], split), split, str(sources[split]))
    return _Decoded(*arrays, form=form)


def _decode_chunk(blobs: list[bytes]) -> tuple[np.ndarray | None, int, str]:
    """Decodes encoded images into uint8[n, 32, 32, 3].

    Self-contained (uses only `io`, `np`, `Image` and `IMAGE_SHAPE`), because worker
    processes run its source without importing jaxbd.

    Returns:
        (images, -1, "") on success, or (None, index, message) for the first bad image.
    """
    out = np.empty((len(blobs), *IMAGE_SHAPE), np.uint8)
    for i, blob in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(blob), formats=("PNG", "JPEG")) as image:
                # Check the header before decoding, so a huge image is never decompressed.
                shape = (image.size[1], image.size[0], len(image.getbands()))
                if shape != IMAGE_SHAPE or image.mode != "RGB":
                    message = f"unexpected image shape {shape} (mode {image.mode})"
                    return None, i, f"{message}: expected {IMAGE_SHAPE} RGB"
                out[i] = np.asarray(image)
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            return None, i, f"cannot decode image: {type(e).__name__}: {e}"
    return out, -1, ""


def _num_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Not on Linux.
        return os.cpu_count() or 1


# Workers are fresh interpreters that run `_decode_chunk`'s own source, sent over stdin with
# the images. Not multiprocessing: its "spawn" and "forkserver" modes re-run an unguarded
# `__main__` script in every worker, and "fork" is unsafe once JAX has started its threads. A
# plain subprocess imports only NumPy and Pillow (~0.2 s) and shares nothing with the parent.
_WORKER = """\
import io, marshal, sys
import numpy as np
from PIL import Image
source, shape, blobs = marshal.load(sys.stdin.buffer)
scope = {"io": io, "np": np, "Image": Image, "IMAGE_SHAPE": tuple(shape)}
exec(compile("from __future__ import annotations\\n" + source, "<decode>", "exec"), scope)
out, index, message = scope["_decode_chunk"](blobs)
marshal.dump((index, message, b"" if out is None else out.tobytes()), sys.stdout.buffer)
"""


def _decode_in_subprocess(blobs: list[bytes]) -> tuple[np.ndarray | None, int, str]:
    """`_decode_chunk(blobs)`, run in a fresh Python process."""
    payload = marshal.dumps((inspect.getsource(_decode_chunk), IMAGE_SHAPE, blobs))
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER], input=payload, capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"decode worker exited with {proc.returncode}: {proc.stderr[-500:]!r}")
    index, message, raw = marshal.loads(proc.stdout)
    out = None if index >= 0 else np.frombuffer(raw, np.uint8).reshape(-1, *IMAGE_SHAPE)
    return out, index, message


def _decode_images(blobs: list[bytes], names: list[str]) -> np.ndarray:
    """Decodes PNG/JPEG images into uint8[N, 32, 32, 3], in worker processes when it pays.

    PIL's per-image Python overhead holds the GIL, so threads do not help; processes do when
    there are idle cores. Measured on the 50k training JPEGs of the shared copy: ~4 s
    in-process, ~5.5 s of CPU in 2 workers (start-up and transfer overhead). With 2 busy cores
    the workers lost (~1.5 s), hence the minimum of 4 cores; with 16 they should cut decoding
    to well under a second.

    Raises:
        DataError: naming the first image (in `names`) that is undecodable or not 32x32 RGB.
    """
    workers = min(_num_workers(), 16)
    results = None
    if workers >= _PARALLEL_DECODE_MIN_CORES and len(blobs) >= _PARALLEL_DECODE_MIN:
        size = -(-len(blobs) // workers)
        starts = range(0, len(blobs), size)
        try:
            # Threads only wait for the worker processes, so the GIL does not matter here.
            with concurrent.futures.ThreadPoolExecutor(len(starts)) as pool:
                chunks = pool.map(_decode_in_subprocess, [blobs[i : i + size] for i in starts])
                results = [
                    (out, index if index < 0 else start + index, message)
                    for start, (out, index, message) in zip(starts, chunks, strict=True)
                ]
        except (OSError, RuntimeError, ValueError, EOFError) as e:
            logger.warning("parallel image decoding failed (%s); decoding in-process", e)
            results = None
    if results is None:
        results = [_decode_chunk(blobs)]
    for out, index, message in results:
        if out is None:
            raise DataError(f"{message} ({names[index]})")
    return np.concatenate([out for out, _, _ in results])


# --------------------------------------------------------------------------------------------
# Download and tfds.
# --------------------------------------------------------------------------------------------


def _download_target(url: str, cache: _Cache) -> Path:
    name = posixpath.basename(urllib.parse.urlparse(url).path) or PYTHON_ARCHIVE
    return cache.dir / name


def _load_download(url: str, expected_sha256: str, cache: _Cache) -> DataSplits:
    """The official archive from the cache directory, downloading it first if needed."""
    key = _archive_key("archive", {"archive": expected_sha256})
    decoded = cache.load(key)
    if decoded is None:
        target = _download_target(url, cache)
        if target.is_file():
            actual = _sha256(target)
            if actual != expected_sha256:
                raise DataError(
                    f"checksum mismatch for the downloaded archive {target}: expected sha256 "
                    f"{expected_sha256}, the file has {actual}; delete it to download it again"
                )
        else:
            _download(url, target, expected_sha256)
        decoded = _decode_archive(target, expected_sha256)
    source = f"cifar10:download:{url} (sha256 {expected_sha256})"
    if decoded.cache_file is None:
        cache.save(key, decoded, source)
    return decoded.to_splits(source)


def _download(url: str, target: Path, expected_sha256: str) -> None:
    """Fetches `url` into `target` via a temporary file, verifying its SHA-256 before renaming."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the download folder {target.parent}: {e}") from e
    logger.info("downloading %s to %s", url, target)
    digest = hashlib.sha256()
    with _atomic_write(target) as f:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise DataError(
                f"cannot download CIFAR-10 from {url}: {e}; without internet access, pass "
                "path=<folder with a local copy>"
            ) from e
        if digest.hexdigest() != expected_sha256:
            # Raising inside `_atomic_write` deletes the temporary file.
            raise DataError(
                f"checksum mismatch for {url}: expected sha256 {expected_sha256}, downloaded "
                f"{digest.hexdigest()}; the download is corrupt or the file changed"
            )


def _tfds_index(example_id, split: str) -> int:
    """The official index in an id like "train_16399" (bytes or str)."""
    text = example_id.decode() if isinstance(example_id, bytes) else str(example_id)
    prefix, _, number = text.rpartition("_")
    if prefix != split or not number.isdigit():
        raise DataError(f"unexpected tfds cifar10 id {text!r} in split {split!r}")
    return int(number)


def _load_tfds(data_dir, cache: _Cache) -> DataSplits:
    """CIFAR-10 from tensorflow-datasets, restored to the official order via the `id` feature."""
    if (hit := cache.load(_TFDS_KEY)) is not None:
        return hit.to_splits("cifar10:tfds")
    try:
        import tensorflow_datasets as tfds  # optional dependency
    except ImportError as e:
        raise DataError(
            "source='tfds' needs tensorflow-datasets, which is not installed: "
            "pip install 'jaxbd[tfds]' (or pass a local path, or source='download')"
        ) from e
    arrays = []
    for split in _SPLITS:
        try:
            data = tfds.as_numpy(
                tfds.load("cifar10", split=split, batch_size=-1, data_dir=data_dir)
            )
        except Exception as e:  # tfds raises assorted errors (not prepared, no network, ...)
            raise DataError(
                f"tensorflow-datasets could not load cifar10 split {split!r} "
                f"(data_dir={data_dir}): {type(e).__name__}: {e}"
            ) from e
        images = np.asarray(data["image"])
        labels = np.asarray(data["label"])
        index = np.array([_tfds_index(i, split) for i in data["id"]])
        if not np.array_equal(np.sort(index), np.arange(len(index))):
            raise DataError(
                f"tfds cifar10 {split} ids are not a permutation of 0..{len(index) - 1}; "
                "cannot restore the official order"
            )
        order = np.argsort(index)
        _check_image_shape(images, f"tfds cifar10 {split}")
        _check_labels(labels, f"tfds cifar10 {split}")
        arrays += [np.ascontiguousarray(images[order]), labels[order].astype(np.int32)]
    decoded = _Decoded(*arrays, form="tfds")
    cache.save(_TFDS_KEY, decoded, "cifar10:tfds")
    return decoded.to_splits("cifar10:tfds")


# --------------------------------------------------------------------------------------------
# Checks shared by all sources.
# --------------------------------------------------------------------------------------------


def _check_image_shape(images: np.ndarray, where) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(
            f"unexpected CIFAR-10 images in {where}: expected uint8[N, 32, 32, 3], found "
            f"{images.dtype}{list(images.shape)}"
        )


def _check_labels(labels: np.ndarray, where) -> None:
    bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if bad.size:
        raise DataError(
            f"labels outside [0, {NUM_CLASSES}) in {where}: {bad.size} of {labels.size} "
            f"labels (e.g. {int(bad[0])})"
        )
