"""Streaming tar archives in memory, member by member.

Nothing is extracted to disk, so member names cannot escape any directory.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from jaxbd.data.dataset import DataError

# Errors that reading a damaged gzip/tar stream raises (gzip.BadGzipFile is an OSError).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def iter_tar(archive: Path) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
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


def member_parts(name: str) -> list[str]:
    """Path components of a tar member name, without "." components."""
    return [p for p in name.split("/") if p not in ("", ".")]
