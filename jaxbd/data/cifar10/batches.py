"""The official formats: five data batches and a test batch, as python pickles or binary records.

Canonical order is the official order: data batches 1-5, then records in file order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxbd.data.cifar10 import unpickle
from jaxbd.data.cifar10.decoded import Decoded, check_labels
from jaxbd.data.cifar10.formats import (
    BINARY_DIR,
    BINARY_RECORD,
    OFFICIAL_BATCH_SIZE,
    OFFICIAL_SHA256,
    PYTHON_DIR,
    TEST_BATCH,
    TRAIN_BATCHES,
)
from jaxbd.data.cifar10.tar import iter_tar, member_parts
from jaxbd.data.dataset import DataError


@dataclasses.dataclass(frozen=True)
class Batches:
    """Raw batch files of an official-format copy: name → bytes, with their origin."""

    blobs: dict[str, bytes]
    binary: bool
    where: str  # the archive or folder, for error messages
    official: bool = False  # the SHA-256-verified official archive: sizes are known


def batch_names(binary: bool) -> tuple[str, ...]:
    """The five data batches' and the test batch's file names, in official order."""
    suffix = ".bin" if binary else ""
    return tuple(f"{name}{suffix}" for name in (*TRAIN_BATCHES, TEST_BATCH))


def decode_batches(batches: Batches, form: str) -> Decoded:
    """Decodes the five data batches and the test batch, in official order."""
    parse = _parse_binary_batch if batches.binary else _parse_python_batch
    names = batch_names(batches.binary)
    parts = {}
    for name in names:
        where = f"{name} in {batches.where}"
        images, labels = parse(batches.blobs[name], where)
        check_labels(labels, where)
        if batches.official and len(labels) != OFFICIAL_BATCH_SIZE:
            raise DataError(
                f"{where} has {len(labels)} images; the official archive's batches have "
                f"{OFFICIAL_BATCH_SIZE}"
            )
        parts[name] = (images, labels)
    test_images, test_labels = parts[names[-1]]
    return Decoded(
        train_images=np.ascontiguousarray(np.concatenate([parts[n][0] for n in names[:-1]])),
        train_labels=np.concatenate([parts[n][1] for n in names[:-1]]).astype(np.int32),
        test_images=np.ascontiguousarray(test_images),
        test_labels=test_labels.astype(np.int32),
        form=form,
    )


def read_dir_batches(folder: Path, *, binary: bool) -> Batches:
    """The batch files of an extracted `cifar-10-batches-{py,bin}/` folder."""
    names = batch_names(binary)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 folder {folder} lacks {', '.join(missing)}: expected the batch files "
            f"{', '.join(names)}"
        )
    return Batches({n: (folder / n).read_bytes() for n in names}, binary, str(folder))


def decode_archive(archive: Path, digest: str) -> Decoded:
    """Decodes an official-format archive (python or binary, recognised by its folder name).

    Args:
        archive: a `.tar.gz` with members under `cifar-10-batches-py/` or
            `cifar-10-batches-bin/`.
        digest: its SHA-256; the official archive's digest also enforces the official sizes.
    """
    official = digest == OFFICIAL_SHA256
    blobs: dict[str, bytes] = {}
    folder = None
    for member, data in iter_tar(archive):
        parts = member_parts(member.name)
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
    missing = [n for n in batch_names(binary) if n not in blobs]
    if missing:
        raise DataError(
            f"archive {archive} lacks {', '.join(f'{folder}/{n}' for n in missing)}: expected "
            f"the five data batches and the test batch"
        )
    if official:
        form = "official python archive"
    else:
        form = "binary archive" if binary else "python archive"
    return decode_batches(Batches(blobs, binary, str(archive), official=official), form)


def _parse_python_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch → (uint8[n, 32, 32, 3], int64[n]); `where` names it in errors."""
    try:
        batch = unpickle.load_batch(blob)
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
    if len(blob) % BINARY_RECORD:
        raise DataError(
            f"CIFAR-10 binary batch {where} has {len(blob)} bytes, not a multiple of the "
            f"{BINARY_RECORD}-byte record (1 label byte + 3 x 32 x 32 pixels); truncated?"
        )
    records = np.frombuffer(blob, np.uint8).reshape(-1, BINARY_RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, records[:, 0].astype(np.int64)
