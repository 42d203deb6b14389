"""The official python archive, downloaded once into the cache folder and checked by SHA-256."""

from __future__ import annotations

import hashlib
import logging
import posixpath
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from jaxbd.data.cifar10 import batches
from jaxbd.data.cifar10.cache import Cache, archive_key, atomic_write
from jaxbd.data.cifar10.checksums import sha256
from jaxbd.data.cifar10.formats import PYTHON_ARCHIVE
from jaxbd.data.dataset import DataError, DataSplits

logger = logging.getLogger(__name__)


def download_target(url: str, cache: Cache) -> Path:
    """Where the archive at `url` is (or will be) kept in the cache folder."""
    name = posixpath.basename(urllib.parse.urlparse(url).path) or PYTHON_ARCHIVE
    return cache.dir / name


def load_download(url: str, expected_sha256: str, cache: Cache) -> DataSplits:
    """The official archive from the cache directory, downloading it first if needed."""
    key = archive_key("archive", {"archive": expected_sha256})
    decoded = cache.load(key)
    if decoded is None:
        target = download_target(url, cache)
        if target.is_file():
            actual = sha256(target)
            if actual != expected_sha256:
                raise DataError(
                    f"checksum mismatch for the downloaded archive {target}: expected sha256 "
                    f"{expected_sha256}, the file has {actual}; delete it to download it again"
                )
        else:
            _download(url, target, expected_sha256)
        decoded = batches.decode_archive(target, expected_sha256)
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
    with atomic_write(target) as f:
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
            # Raising inside `atomic_write` deletes the temporary file.
            raise DataError(
                f"checksum mismatch for {url}: expected sha256 {expected_sha256}, downloaded "
                f"{digest.hexdigest()}; the download is corrupt or the file changed"
            )
