"""`load_cifar10`: picks the source, and loads a local copy through the cache."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from jaxbd.data.cifar10 import batches, download, image_folders, tfds
from jaxbd.data.cifar10.cache import TFDS_KEY, Cache, archive_key, key
from jaxbd.data.cifar10.checksums import sha256, verify_checksums
from jaxbd.data.cifar10.formats import OFFICIAL_SHA256, OFFICIAL_URL, SOURCES
from jaxbd.data.cifar10.layout import find_layout, listing
from jaxbd.data.dataset import DataError, DataSplits


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
        path: a local copy: a folder holding one of the recognised layouts (see
            `jaxbd.data.cifar10`) or the path of an official archive. Used by
            `source="path"` and, when given, by `source="auto"`.
        source: "auto" (path if given, else a cached decode, else a downloaded archive in the
            cache, else tfds if installed, else download), "path", "download" or "tfds".
        cache_dir: where decoded arrays and downloads are kept; None: `$JAXBD_CACHE` or
            `~/.cache/jaxbd`. Files go in its `cifar10/` subfolder.
        url: where `source="download"` fetches the python-format archive from.
        expected_sha256: the SHA-256 the downloaded archive must have.
        tfds_data_dir: `data_dir` passed to `tfds.load` (None: tfds's default).

    A first load of image folders on a machine with 4 or more cores decodes the images in
    spawned worker processes (`jaxbd.data.cifar10.decode`); as with any spawned process, a
    script calling this must keep its work under `if __name__ == "__main__":`.

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
    cache = Cache(cache_dir)
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
        return download.load_download(url, expected_sha256, cache)
    if source == "tfds":
        return tfds.load_tfds(tfds_data_dir, cache)
    # source == "auto" without a path.
    for cache_key in (archive_key("archive", {"archive": expected_sha256}), TFDS_KEY):
        if (hit := cache.load(cache_key)) is not None:
            return hit.to_splits(hit.source)  # as recorded by the load that decoded it
    if download.download_target(url, cache).is_file():
        return download.load_download(url, expected_sha256, cache)
    if importlib.util.find_spec("tensorflow_datasets") is not None:
        return tfds.load_tfds(tfds_data_dir, cache)
    return download.load_download(url, expected_sha256, cache)


def _load_path(path: Path, cache: Cache) -> DataSplits:
    """Loads a local copy, from the cache when its content was decoded before."""
    layout = find_layout(path)
    digests, verified = {}, False
    if layout.kind in ("archive", "image-archives"):
        # Hash the archives even on a cache hit: the digest is the cache key, and a copy that
        # no longer matches its SHA256SUMS must fail rather than be served from the cache.
        digests = {role: sha256(file) for role, file in layout.files.items()}
        verified = verify_checksums(layout.files, digests)
        verified |= digests.get("archive") == OFFICIAL_SHA256
        cache_key = archive_key(layout.kind, digests)
    else:
        cache_key = key({"kind": layout.kind, "listing": listing(layout.files)})
    decoded = cache.load(cache_key)
    if decoded is None:
        if layout.kind == "archive":
            decoded = batches.decode_archive(layout.files["archive"], digests["archive"])
        elif layout.kind in ("image-archives", "image-dirs"):
            collect = (
                image_folders.collect_archive
                if layout.kind == "image-archives"
                else image_folders.collect_dir
            )
            decoded = image_folders.decode_image_folders(layout.files, collect, layout.description)
        else:
            binary = layout.kind == "binary-dir"
            dir_batches = batches.read_dir_batches(layout.files["dir"], binary=binary)
            decoded = batches.decode_batches(dir_batches, layout.description)
    source = f"cifar10:path:{path} ({decoded.form}{', sha256 verified' if verified else ''})"
    if decoded.cache_file is None:
        cache.save(cache_key, decoded, source)
    return decoded.to_splits(source)
