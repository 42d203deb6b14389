"""SHA-256 checksums: hashing files and checking them against a `SHA256SUMS` file."""

from __future__ import annotations

import hashlib
import posixpath
import string
from pathlib import Path

from jaxbd.data.cifar10.formats import CHECKSUM_FILE
from jaxbd.data.dataset import DataError


def sha256(file: Path) -> str:
    """The hex SHA-256 of a file's content."""
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_checksums(folder: Path) -> dict[str, str]:
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


def verify_checksums(files: dict[str, Path], digests: dict[str, str]) -> bool:
    """Checks each file against a SHA256SUMS next to it.

    Args:
        files: the files, by role ("archive", "train", "test").
        digests: their SHA-256 digests, by the same roles.

    Returns:
        True if every file was listed (and matched); False if some were not listed.

    Raises:
        DataError: for a listed file whose digest differs.
    """
    all_listed = True
    for role, file in files.items():
        expected = read_checksums(file.parent).get(file.name)
        if expected is None:
            all_listed = False
        elif expected != digests[role]:
            raise DataError(
                f"checksum mismatch for {file}: {file.parent / CHECKSUM_FILE} expects sha256 "
                f"{expected}, the file has {digests[role]}; the file is corrupt, incomplete or "
                "a different version — replace it"
            )
    return all_listed
