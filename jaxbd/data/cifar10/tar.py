"""Tar archives read in memory, verified to the end of their compressed stream.

Nothing is extracted to disk, so member names cannot escape any directory.

A tar reader stops at the end-of-archive marker, and silently at a garbled header, so on its
own it never reaches the end of the gzip stream, where gzip keeps the CRC-32 and length of
the data: one flipped byte near the end of a `.tgz` would load as one silently wrong image.
`iter_tar` therefore reads the whole archive, then the compressed stream to its end (which
makes `gzip` check the CRC and length, and `bz2`/`lzma` their own checks), before yielding
the first member: what its callers see has been verified.
"""

from __future__ import annotations

import gzip
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from jaxbd.data.dataset import DataError

# Errors that reading a damaged gzip/tar stream raises (gzip.BadGzipFile is an OSError).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)
_CHUNK = 1 << 20


def iter_tar(archive: Path) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Yields (member, bytes) in archive order (bytes None for non-files), in memory.

    The whole archive is read and its compressed stream checked to the end first (see the
    module docstring).

    Raises:
        DataError: when the archive is not a tar file, is truncated, or is corrupt (its gzip
            CRC or length check fails, or its compressed data cannot be decompressed).
    """
    yield from _read_verified(archive)


def _read_verified(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    members = []
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                data = tar.extractfile(member).read() if member.isfile() else None
                members.append((member, data))
            # The tar reader stopped at the end-of-archive marker (or at a garbled header):
            # read the compressed stream to its end, so that its checksum is checked.
            while tar.fileobj.read(_CHUNK):
                pass
    except _ARCHIVE_ERRORS as e:
        raise _archive_error(archive, e) from e
    return members


def _archive_error(archive: Path, e: BaseException) -> DataError:
    """The DataError for an archive that cannot be read: corruption named as corruption."""
    if isinstance(e, gzip.BadGzipFile) and ("CRC" in str(e) or "length" in str(e)):
        return DataError(
            f"{archive} is corrupt (gzip CRC/length check failed); re-download or restore it"
        )
    return DataError(
        f"cannot read archive {archive}: {type(e).__name__}: {_reason(e)}; the file is corrupt "
        "or truncated (expected a complete .tar.gz); re-download or restore it"
    )


def _reason(e: BaseException) -> str:
    """The error's message on one line: for a tar file no method could open, the gzip
    method's reason (a `.tar.gz` is what every layout expects)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    gz = [line.removeprefix("- method gz:").strip() for line in lines if "method gz:" in line]
    if gz:
        return f"{lines[0].rstrip(':')} as gzip: {gz[0]}"
    return " ".join(lines)


def member_parts(name: str) -> list[str]:
    """Path components of a tar member name, without "." components."""
    return [p for p in name.split("/") if p not in ("", ".")]
