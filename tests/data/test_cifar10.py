"""CIFAR-10 loading from tiny fake copies of every supported layout, and every error path.

The fakes have a few images per batch or class folder, so the whole file runs in seconds; the
real copy is loaded only by the test marked slow.
"""

import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import sys
import tarfile
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxbd.data import DataError, load_cifar10, load_dataset
from jaxbd.data.cifar10 import CLASS_NAMES
from jaxbd.data.cifar10 import batches as batches_lib
from jaxbd.data.cifar10 import decode as decode_lib
from jaxbd.data.cifar10 import download as download_lib
from jaxbd.data.cifar10 import image_folders as image_folders_lib

TRAIN_PER_BATCH, TEST_SIZE = 4, 6


# --------------------------------------------------------------------------------------------
# Fake copies.
# --------------------------------------------------------------------------------------------


def _arrays(seed=0):
    """Official-order fake data: 5 batches of 4 train images, 6 test images."""
    rng = np.random.default_rng(seed)
    n = 5 * TRAIN_PER_BATCH
    return (
        rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        (np.arange(n) * 3 % 10).astype(np.int32),
        rng.integers(0, 256, (TEST_SIZE, 32, 32, 3), dtype=np.uint8),
        (np.arange(TEST_SIZE) * 7 % 10).astype(np.int32),
    )


def _batches(arrays):
    """(name, images, labels) of the five data batches and the test batch."""
    train_x, train_y, test_x, test_y = arrays
    k = TRAIN_PER_BATCH
    out = [(f"data_batch_{i + 1}", train_x[i * k : (i + 1) * k], train_y[i * k : (i + 1) * k])
           for i in range(5)]  # fmt: skip
    return [*out, ("test_batch", test_x, test_y)]


def _python_batch(images, labels, protocol=2):
    """A pickled batch as in the official archive (dict with bytes keys, rows of R, G, B planes).

    Protocol 2 pickles name `numpy.core.multiarray._reconstruct`, as the official ones
    (written by NumPy 1.x) do, rather than NumPy 2's `numpy._core`.
    """
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    batch = {b"batch_label": b"fake", b"labels": [int(y) for y in labels], b"data": data}
    blob = pickle.dumps(batch, protocol=protocol)
    return blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _binary_batch(images, labels):
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([np.asarray(labels, np.uint8)[:, None], data], axis=1).tobytes()


def _write_tar(path, members):
    """A .tar.gz with `{member name: bytes}`, read back only in memory by the loader."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _official_members(arrays, *, binary=False, overrides=None):
    folder = "cifar-10-batches-bin" if binary else "cifar-10-batches-py"
    suffix = ".bin" if binary else ""
    encode = _binary_batch if binary else _python_batch
    members = {f"{folder}/batches.meta{suffix}": b"meta"}
    for name, x, y in _batches(arrays):
        members[f"{folder}/{name}{suffix}"] = encode(x, y)
    members.update(overrides or {})
    return members


def _python_archive(folder, arrays, **kwargs):
    folder.mkdir(parents=True, exist_ok=True)
    return _write_tar(folder / "cifar-10-python.tar.gz", _official_members(arrays, **kwargs))


def _png(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# Deliberately not in string order, and "10" sorts before "9": the loader sorts by file name.
FILE_NAMES = ("9.png", "10.png", "b.png")


def _image_tree(seed=0):
    """{split: {class: {file name: image}}} and the canonical (sorted) arrays."""
    rng = np.random.default_rng(seed)
    tree, canonical = {}, {}
    for split in ("train", "test"):
        tree[split] = {
            c: {f: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for f in FILE_NAMES}
            for c in CLASS_NAMES
        }
        order = [(label, f) for label, c in enumerate(CLASS_NAMES) for f in sorted(FILE_NAMES)]
        canonical[split] = (
            np.stack([tree[split][CLASS_NAMES[label]][f] for label, f in order]),
            np.array([label for label, _ in order], np.int32),
        )
    return tree, canonical


def _image_members(tree, split):
    return {
        f"{split}/{c}/{f}": _png(x) for c, files in tree[split].items() for f, x in files.items()
    }


def _image_dirs(folder, tree):
    for split in ("train", "test"):
        for name, data in _image_members(tree, split).items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    return folder


def _image_archives(folder, tree, *, checksums=True):
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        _write_tar(folder / f"{split}.tgz", _image_members(tree, split))
    if checksums:
        _write_checksums(folder, "train.tgz", "test.tgz")
    return folder


def _write_checksums(folder, *names):
    lines = [f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}" for n in names]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def _assert_equal(splits, arrays):
    train_x, train_y, test_x, test_y = arrays
    np.testing.assert_array_equal(splits.train.images, train_x)
    np.testing.assert_array_equal(splits.train.labels, train_y)
    np.testing.assert_array_equal(splits.test.images, test_x)
    np.testing.assert_array_equal(splits.test.labels, test_y)
    assert splits.train.class_names == CLASS_NAMES
    assert splits.train.labels.dtype == np.int32


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


# --------------------------------------------------------------------------------------------
# Every layout round-trips exactly, in canonical order.
# --------------------------------------------------------------------------------------------


def test_python_archive_folder_and_file(tmp_path, cache):
    arrays = _arrays()
    archive = _python_archive(tmp_path / "copy", arrays)
    splits = load_cifar10(tmp_path / "copy", cache_dir=cache)
    _assert_equal(splits, arrays)
    assert splits.source == f"cifar10:path:{tmp_path / 'copy'} (python archive)"
    _assert_equal(load_cifar10(archive, source="path", cache_dir=tmp_path / "c2"), arrays)


def test_python_batches_folder(tmp_path, cache):
    arrays = _arrays()
    folder = tmp_path / "copy" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, x, y in _batches(arrays):
        (folder / name).write_bytes(_python_batch(x, y, protocol=5))  # NumPy 2's own pickles
    splits = load_cifar10(tmp_path / "copy", cache_dir=cache)
    _assert_equal(splits, arrays)
    assert "cifar-10-batches-py/ folder" in splits.source
    _assert_equal(load_cifar10(folder, cache_dir=cache), arrays)  # the folder itself


def test_binary_archive_and_folder(tmp_path, cache):
    arrays = _arrays(1)
    (tmp_path / "a").mkdir()
    _write_tar(tmp_path / "a" / "cifar-10-binary.tar.gz", _official_members(arrays, binary=True))
    splits = load_cifar10(tmp_path / "a", cache_dir=cache)
    _assert_equal(splits, arrays)
    assert "binary archive" in splits.source
    folder = tmp_path / "b" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, x, y in _batches(arrays):
        (folder / f"{name}.bin").write_bytes(_binary_batch(x, y))
    _assert_equal(load_cifar10(tmp_path / "b", cache_dir=cache), arrays)


def test_image_folders_in_canonical_order(tmp_path, cache):
    tree, canonical = _image_tree()
    splits = load_cifar10(_image_dirs(tmp_path / "copy", tree), cache_dir=cache)
    _assert_equal(splits, (*canonical["train"], *canonical["test"]))
    assert splits.source == f"cifar10:path:{tmp_path / 'copy'} (image folders)"


def test_image_archives_with_checksums(tmp_path, cache):
    tree, canonical = _image_tree()
    folder = _image_archives(tmp_path / "copy", tree)
    splits = load_cifar10(folder, cache_dir=cache)
    _assert_equal(splits, (*canonical["train"], *canonical["test"]))
    assert splits.source == f"cifar10:path:{folder} (image-folder .tgz, sha256 verified)"
    assert splits.train.source == splits.source


def test_parallel_decode_matches_serial(tmp_path, cache, monkeypatch, caplog):
    tree, canonical = _image_tree()
    monkeypatch.setattr(decode_lib, "_PARALLEL_DECODE_MIN", 0)
    monkeypatch.setattr(decode_lib, "_num_workers", lambda: 4)
    decoded_in_workers = []

    class CountingPool(decode_lib.ProcessPoolExecutor):
        def submit(self, fn, blobs):
            decoded_in_workers.append(len(blobs))
            return super().submit(fn, blobs)

    monkeypatch.setattr(decode_lib, "ProcessPoolExecutor", CountingPool)
    splits = load_cifar10(_image_archives(tmp_path / "copy", tree), cache_dir=cache)
    _assert_equal(splits, (*canonical["train"], *canonical["test"]))
    assert sum(decoded_in_workers) == 60 and len(decoded_in_workers) == 8  # 4 per split
    assert "decoding in-process" not in caplog.text  # the workers did not fail over


def test_load_dataset_dispatches_to_cifar10(tmp_path, cache):
    arrays = _arrays()
    _python_archive(tmp_path / "copy", arrays)
    config = ml_collections.ConfigDict(
        {"name": "cifar10", "path": str(tmp_path / "copy"), "source": "path",
         "cache_dir": str(cache)}
    )  # fmt: skip
    _assert_equal(load_dataset(config), arrays)


# --------------------------------------------------------------------------------------------
# Cache.
# --------------------------------------------------------------------------------------------


def _forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded although a cache file exists")

    monkeypatch.setattr(batches_lib, "decode_archive", fail)
    monkeypatch.setattr(batches_lib, "decode_batches", fail)
    monkeypatch.setattr(image_folders_lib, "decode_image_folders", fail)


def test_second_load_is_served_from_the_cache(tmp_path, cache, monkeypatch):
    tree, canonical = _image_tree()
    folder = _image_archives(tmp_path / "copy", tree)
    first = load_cifar10(folder, cache_dir=cache)
    (cache_file,) = (cache / "cifar10").glob("*.npz")
    _forbid_decoding(monkeypatch)
    second = load_cifar10(folder, cache_dir=cache)
    _assert_equal(second, (*canonical["train"], *canonical["test"]))
    assert second.source == f"{first.source}; cached {cache_file}"
    assert not list((cache / "cifar10").glob(".*"))  # no temporary files left behind
    # The cache is keyed by content: a copy elsewhere hits it, and records its own path.
    shutil.copytree(folder, tmp_path / "elsewhere")
    third = load_cifar10(tmp_path / "elsewhere", cache_dir=cache)
    assert third.source == (
        f"cifar10:path:{tmp_path / 'elsewhere'} (image-folder .tgz, sha256 verified); "
        f"cached {cache_file}"
    )


def test_cache_dir_defaults_to_the_environment(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("JAXBD_CACHE", str(cache))
    _python_archive(tmp_path / "copy", _arrays())
    load_cifar10(tmp_path / "copy")
    assert len(list((cache / "cifar10").glob("*.npz"))) == 1


def test_corrupt_cache_file_is_rebuilt_with_a_warning(tmp_path, cache):
    arrays = _arrays()
    _python_archive(tmp_path / "copy", arrays)
    load_cifar10(tmp_path / "copy", cache_dir=cache)
    (cache_file,) = (cache / "cifar10").glob("*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="unreadable CIFAR-10 cache"):
        splits = load_cifar10(tmp_path / "copy", cache_dir=cache)
    _assert_equal(splits, arrays)
    assert "cached" not in splits.source
    assert "cached" in load_cifar10(tmp_path / "copy", cache_dir=cache).source  # rebuilt


def test_changed_folder_is_decoded_again(tmp_path, cache):
    tree, _ = _image_tree()
    folder = _image_dirs(tmp_path / "copy", tree)
    assert len(load_cifar10(folder, cache_dir=cache).train) == 30
    (folder / "train" / "cat" / "new.png").write_bytes(_png(tree["train"]["cat"]["b.png"]))
    splits = load_cifar10(folder, cache_dir=cache)
    assert len(splits.train) == 31 and "cached" not in splits.source


# --------------------------------------------------------------------------------------------
# Download (file:// URLs stand in for the network).
# --------------------------------------------------------------------------------------------


def test_download_verifies_caches_and_is_found_by_auto(tmp_path, cache, monkeypatch):
    arrays = _arrays()
    archive = _python_archive(tmp_path / "remote", arrays)
    url, digest = archive.as_uri(), hashlib.sha256(archive.read_bytes()).hexdigest()
    splits = load_cifar10(source="download", cache_dir=cache, url=url, expected_sha256=digest)
    _assert_equal(splits, arrays)
    assert splits.source == f"cifar10:download:{url} (sha256 {digest})"
    assert (cache / "cifar10" / "cifar-10-python.tar.gz").is_file()

    def no_network(*args, **kwargs):
        raise AssertionError("downloaded twice")

    monkeypatch.setattr(download_lib.urllib.request, "urlopen", no_network)
    _forbid_decoding(monkeypatch)
    again = load_cifar10(cache_dir=cache, url=url, expected_sha256=digest)  # source="auto"
    _assert_equal(again, arrays)
    assert again.source.startswith(splits.source + "; cached ")


def test_auto_uses_a_downloaded_archive_before_downloading(tmp_path, cache, monkeypatch):
    arrays = _arrays()
    archive = _python_archive(cache / "cifar10", arrays)  # as if downloaded earlier
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(download_lib.urllib.request, "urlopen", None)  # any use would fail
    splits = load_cifar10(cache_dir=cache, expected_sha256=digest)
    _assert_equal(splits, arrays)


def test_download_checksum_mismatch(tmp_path, cache):
    archive = _python_archive(tmp_path / "remote", _arrays())
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="checksum mismatch") as info:
        load_cifar10(source="download", cache_dir=cache, url=archive.as_uri(),
                     expected_sha256="0" * 64)  # fmt: skip
    assert "0" * 64 in str(info.value) and actual in str(info.value)
    assert list((cache / "cifar10").iterdir()) == []  # temp file deleted, nothing renamed


def test_download_failure(tmp_path, cache):
    url = (tmp_path / "missing.tar.gz").as_uri()
    with pytest.raises(DataError, match="cannot download CIFAR-10 from"):
        load_cifar10(source="download", cache_dir=cache, url=url)
    assert list((cache / "cifar10").iterdir()) == []


# --------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------


def test_missing_path(tmp_path, cache):
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "nowhere", cache_dir=cache)


def test_unrecognised_layout(tmp_path, cache):
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no CIFAR-10 layout recognised") as info:
        load_cifar10(tmp_path / "copy", cache_dir=cache)
    for looked_for in ("cifar-10-python.tar.gz", "train.tgz", "notes.txt"):
        assert looked_for in str(info.value)


def test_only_one_split_present(tmp_path, cache):
    tree, _ = _image_tree()
    folder = _image_archives(tmp_path / "copy", tree, checksums=False)
    (folder / "test.tgz").unlink()
    with pytest.raises(DataError, match="no test images"):
        load_cifar10(folder, cache_dir=cache)


def test_truncated_archive(tmp_path, cache):
    archive = _python_archive(tmp_path / "copy", _arrays())
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        load_cifar10(tmp_path / "copy", cache_dir=cache)
    assert str(archive) in str(info.value)


def test_corrupt_gzip(tmp_path, cache):
    archive = _python_archive(tmp_path / "copy", _arrays())
    data = bytearray(archive.read_bytes())
    data[20:80] = bytes(b ^ 0x5A for b in data[20:80])
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_cifar10(tmp_path / "copy", cache_dir=cache)


def test_not_an_archive(tmp_path, cache):
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "cifar-10-python.tar.gz").write_bytes(b"hello" * 100)
    with pytest.raises(DataError, match="cannot read archive"):
        load_cifar10(tmp_path / "copy", cache_dir=cache)


def test_archive_without_batches_folder(tmp_path, cache):
    _write_tar(tmp_path / "other.tar.gz", {"readme.txt": b"hi"})
    with pytest.raises(DataError, match="not a CIFAR-10 archive"):
        load_cifar10(tmp_path / "other.tar.gz", cache_dir=cache)


def test_missing_batch(tmp_path, cache):
    members = _official_members(_arrays())
    del members["cifar-10-batches-py/data_batch_3"]
    (tmp_path / "copy").mkdir()
    _write_tar(tmp_path / "copy" / "cifar-10-python.tar.gz", members)
    with pytest.raises(DataError, match="lacks cifar-10-batches-py/data_batch_3"):
        load_cifar10(tmp_path / "copy", cache_dir=cache)


def test_checksum_mismatch_from_sha256sums(tmp_path, cache):
    tree, _ = _image_tree()
    folder = _image_archives(tmp_path / "copy", tree)
    sums = (folder / "SHA256SUMS").read_text()
    good = sums.split()[0]
    (folder / "SHA256SUMS").write_text(sums.replace(good, "f" * 64))
    with pytest.raises(DataError, match=r"checksum mismatch for .*train.tgz") as info:
        load_cifar10(folder, cache_dir=cache)
    assert "f" * 64 in str(info.value) and good in str(info.value)


def test_sha256sums_also_guards_a_cached_decode(tmp_path, cache):
    tree, _ = _image_tree()
    folder = _image_archives(tmp_path / "copy", tree)
    load_cifar10(folder, cache_dir=cache)
    _write_tar(folder / "test.tgz", _image_members(_image_tree(1)[0], "test"))  # replaced
    with pytest.raises(DataError, match=r"checksum mismatch for .*test.tgz"):
        load_cifar10(folder, cache_dir=cache)


def test_wrong_image_shape_in_a_batch(tmp_path, cache):
    bad = pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, protocol=2)
    _python_archive(tmp_path / "copy", _arrays(), overrides={"cifar-10-batches-py/test_batch": bad})
    with pytest.raises(DataError, match=r"unexpected image shape .*test_batch"):
        load_cifar10(tmp_path / "copy", cache_dir=cache)


def test_wrong_image_shape_in_a_folder(tmp_path, cache):
    tree, _ = _image_tree()
    tree["train"]["dog"]["b.png"] = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(DataError, match=r"unexpected image shape \(16, 16, 3\).*dog/b.png"):
        load_cifar10(_image_dirs(tmp_path / "copy", tree), cache_dir=cache)


def test_grayscale_image_is_rejected(tmp_path, cache):
    tree, _ = _image_tree()
    folder = _image_dirs(tmp_path / "copy", tree)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "test" / "cat" / "9.png")
    with pytest.raises(DataError, match=r"unexpected image shape \(32, 32, 1\).*cat/9.png"):
        load_cifar10(folder, cache_dir=cache)


@pytest.mark.parametrize("binary", [False, True])
def test_label_out_of_range(tmp_path, cache, binary):
    train_x, train_y, test_x, test_y = _arrays()
    train_y[5] = 10 if binary else -1  # a uint8 label byte cannot be negative
    archive = "cifar-10-binary.tar.gz" if binary else "cifar-10-python.tar.gz"
    (tmp_path / "copy").mkdir()
    members = _official_members((train_x, train_y, test_x, test_y), binary=binary)
    _write_tar(tmp_path / "copy" / archive, members)
    pattern = rf"labels outside \[0, 10\) in data_batch_2(.bin)? in .*{archive}"
    with pytest.raises(DataError, match=pattern):
        load_cifar10(tmp_path / "copy", cache_dir=cache)


def test_truncated_binary_batch(tmp_path, cache):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name, x, y in _batches(_arrays()):
        (folder / f"{name}.bin").write_bytes(_binary_batch(x, y))
    (folder / "test_batch.bin").write_bytes((folder / "test_batch.bin").read_bytes()[:-10])
    with pytest.raises(DataError, match="not a multiple of the 3073-byte record"):
        load_cifar10(folder, cache_dir=cache)


def test_pickle_with_foreign_globals_is_refused(tmp_path, cache):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = {"cifar-10-batches-py/data_batch_1": pickle.dumps(Evil())}
    _python_archive(tmp_path / "copy", _arrays(), overrides=evil)
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar10(tmp_path / "copy", cache_dir=cache)


def test_unknown_class_folder(tmp_path, cache):
    tree, _ = _image_tree()
    tree["train"]["zebra"] = {"1.png": np.zeros((32, 32, 3), np.uint8)}
    with pytest.raises(DataError, match="unknown class folder 'zebra'"):
        load_cifar10(_image_archives(tmp_path / "copy", tree), cache_dir=cache)
    with pytest.raises(DataError, match="unknown class folder 'zebra'"):
        load_cifar10(_image_dirs(tmp_path / "dirs", tree), cache_dir=cache)


def test_missing_class_folder(tmp_path, cache):
    tree, _ = _image_tree()
    del tree["test"]["truck"]
    with pytest.raises(DataError, match=r"no images for class folder.* truck"):
        load_cifar10(_image_archives(tmp_path / "copy", tree), cache_dir=cache)


def test_undecodable_image(tmp_path, cache):
    tree, _ = _image_tree()
    folder = _image_dirs(tmp_path / "copy", tree)
    (folder / "train" / "frog" / "10.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot decode image.*frog/10.png"):
        load_cifar10(folder, cache_dir=cache)


def test_undecodable_image_in_a_worker_is_named(tmp_path, cache, monkeypatch):
    tree, _ = _image_tree()
    folder = _image_dirs(tmp_path / "copy", tree)
    (folder / "train" / "truck" / "b.png").write_bytes(b"not an image")
    monkeypatch.setattr(decode_lib, "_PARALLEL_DECODE_MIN", 0)
    monkeypatch.setattr(decode_lib, "_num_workers", lambda: 4)
    with pytest.raises(DataError, match=r"cannot decode image.*truck/b.png"):
        load_cifar10(folder, cache_dir=cache)


def test_official_archive_sizes_are_enforced(tmp_path, cache, monkeypatch):
    archive = _python_archive(tmp_path / "copy", _arrays())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(batches_lib, "OFFICIAL_SHA256", digest)  # pretend it is official
    with pytest.raises(DataError, match="official archive's batches have 10000"):
        load_cifar10(tmp_path / "copy", cache_dir=cache)


def test_bad_source_arguments(tmp_path, cache):
    with pytest.raises(DataError, match="unknown CIFAR-10 source 'web'"):
        load_cifar10(source="web", cache_dir=cache)
    with pytest.raises(DataError, match="needs a path"):
        load_cifar10(source="path", cache_dir=cache)
    with pytest.raises(DataError, match="only used with source"):
        load_cifar10(tmp_path, source="download", cache_dir=cache)


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow_datasets") is not None,
    reason="tensorflow-datasets is installed",
)
def test_tfds_not_installed(cache):
    with pytest.raises(DataError, match=r"pip install 'jaxbd\[tfds\]'"):
        load_cifar10(source="tfds", cache_dir=cache)


def test_tfds_order_is_restored_from_the_ids(cache, monkeypatch):
    """A stand-in for tensorflow_datasets, shuffled as tfds shuffles its records."""
    arrays = _arrays()
    by_split = {"train": arrays[:2], "test": arrays[2:]}
    calls = []

    def load(name, *, split, batch_size, data_dir):
        calls.append((name, split, batch_size, data_dir))
        images, labels = by_split[split]
        perm = np.random.default_rng(0).permutation(len(labels))
        ids = np.array([f"{split}_{i:05d}".encode() for i in perm], dtype=object)
        return {"image": images[perm], "label": labels[perm].astype(np.int64), "id": ids}

    fake = type("FakeTfds", (), {"load": staticmethod(load), "as_numpy": staticmethod(lambda x: x)})
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    splits = load_cifar10(source="tfds", cache_dir=cache, tfds_data_dir="/tfds")
    _assert_equal(splits, arrays)
    assert splits.source == "cifar10:tfds"
    assert calls == [("cifar10", "train", -1, "/tfds"), ("cifar10", "test", -1, "/tfds")]
    again = load_cifar10(cache_dir=cache, expected_sha256="0" * 64)  # auto: cached tfds decode
    _assert_equal(again, arrays)
    assert again.source.startswith("cifar10:tfds; cached ")


# --------------------------------------------------------------------------------------------
# The real copy (slow).
# --------------------------------------------------------------------------------------------

REAL_COPY = Path(
    os.environ.get(
        "JAXBD_CIFAR10_PATH", Path(__file__).resolve().parents[2] / ".." / "shared/data/cifar10"
    )
)


@pytest.mark.slow
@pytest.mark.skipif(not REAL_COPY.exists(), reason=f"no CIFAR-10 copy at {REAL_COPY}")
def test_real_copy(tmp_path):
    start = time.perf_counter()
    splits = load_cifar10(REAL_COPY, cache_dir=tmp_path)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    cached = load_cifar10(REAL_COPY, cache_dir=tmp_path)
    warm = time.perf_counter() - start
    print(f"real CIFAR-10 copy: cold load {cold:.1f} s, cached load {warm:.2f} s")
    for split, n in ((splits.train, 50_000), (splits.test, 10_000)):
        assert split.images.shape == (n, 32, 32, 3) and split.images.dtype == np.uint8
        np.testing.assert_array_equal(split.class_counts(), np.full(10, n // 10))
    # Canonical order: sorted by class, so labels are non-decreasing.
    assert np.all(np.diff(splits.train.labels) >= 0)
    if (REAL_COPY / "SHA256SUMS").exists():
        assert "sha256 verified" in splits.source
    assert "cached" in cached.source
    np.testing.assert_array_equal(cached.train.images, splits.train.images)
    # JPEG-compressed CIFAR-10 keeps the familiar channel statistics.
    mean = splits.train.images.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(mean, (0.4914, 0.4822, 0.4465), atol=0.01)


# --------------------------------------------------------------------------------------------
# Corruption without SHA256SUMS: the whole gzip stream is verified.
# --------------------------------------------------------------------------------------------


def _flip(file, offsets_from_end):
    data = bytearray(file.read_bytes())
    for offset in offsets_from_end:
        data[len(data) - offset] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "offsets",
    [
        pytest.param((40,), id="one-byte-near-the-end"),  # loaded silently (one wrong image)
        pytest.param(tuple(range(100, 212, 7)), id="sixteen-bytes"),  # an undecodable member
    ],
)
def test_flipped_bytes_in_an_archive_without_checksums_are_corruption(tmp_path, cache, offsets):
    tree, canonical = _image_tree()
    intact = _image_archives(tmp_path / "intact", tree, checksums=False)
    splits = load_cifar10(intact, cache_dir=cache)  # an intact archive still loads
    np.testing.assert_array_equal(splits.train.images, canonical["train"][0])

    folder = _image_archives(tmp_path / "copy", tree, checksums=False)
    _flip(folder / "train.tgz", offsets)
    with pytest.raises(DataError, match="is corrupt") as info:
        load_cifar10(folder, cache_dir=tmp_path / "other_cache")
    message = str(info.value)
    assert str(folder / "train.tgz") in message and "re-download or restore it" in message
    assert "cannot decode" not in message and "no images for class" not in message


def test_corrupt_official_archive_names_the_file(tmp_path, cache):
    archive = _python_archive(tmp_path / "copy", _arrays())
    _flip(archive, (100,))
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz is corrupt \(gzip CRC"):
        load_cifar10(tmp_path / "copy", cache_dir=cache)


@pytest.mark.parametrize("content", [b"hello" * 100, b"\x1f\x8b" + b"\x00" * 200])
def test_unreadable_archive_is_one_line(tmp_path, cache, content):
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "cifar-10-python.tar.gz").write_bytes(content)
    with pytest.raises(DataError, match="cannot read archive") as info:
        load_cifar10(tmp_path / "copy", cache_dir=cache)
    assert "\n" not in str(info.value) and "re-download or restore it" in str(info.value)
