"""CIFAR-10 as uint8 arrays in canonical order, from a local copy, a download, or tfds.

The dataset is Krizhevsky (2009), "Learning Multiple Layers of Features from Tiny Images".
Sources, tried in this order by `source="auto"`:

1. A local `path` holding one of
   - the official python archive `cifar-10-python.tar.gz` (or the path of the archive
     itself, or its extracted `cifar-10-batches-py/` folder),
   - the official binary archive `cifar-10-binary.tar.gz` (or `cifar-10-batches-bin/`),
   - image folders `train/<class>/*.{png,jpg}` and `test/<class>/*`, as directories or packed
     as `train.tgz` and `test.tgz`.
   A `SHA256SUMS` file next to the archives is checked before anything is decoded.
2. A decode cached by an earlier run.
3. The official archive already downloaded into the cache directory.
4. tensorflow-datasets, when installed.
5. The official archive, downloaded once into the cache directory and checked against its
   known SHA-256.

Canonical order is the official order (data batches 1-5, then records in file order) for the
archives, id order for tfds (which numbers the official order), and for image folders: by
class in CIFAR-10 label order, then by file name.

One module per concern:

- `formats`: class names, shapes, file names and the official archive's checksum.
- `load`: `load_cifar10`, which picks the source and loads a local copy.
- `layout`: which layout a local path holds; `checksums`: SHA-256 and `SHA256SUMS`.
- `cache`: the decoded `.npz` cache; `decoded`: the decoded arrays and their checks.
- `batches`: the official pickled or binary batches; `unpickle`: the restricted unpickler.
- `tar`: archives read in memory; `image_folders` and `decode`: image folders, their decoder.
- `download`, `tfds`: the remote sources.
"""

from jaxbd.data.cifar10.formats import (
    CLASS_NAMES,
    IMAGE_SHAPE,
    NUM_CLASSES,
    OFFICIAL_SHA256,
    OFFICIAL_URL,
    SOURCES,
)
from jaxbd.data.cifar10.load import load_cifar10

__all__ = [
    "CLASS_NAMES",
    "IMAGE_SHAPE",
    "NUM_CLASSES",
    "OFFICIAL_SHA256",
    "OFFICIAL_URL",
    "SOURCES",
    "load_cifar10",
]
