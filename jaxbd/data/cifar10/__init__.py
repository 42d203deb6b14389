"""CIFAR-10 as uint8 arrays in canonical order, from a local copy, a download, or tfds.

The dataset is Krizhevsky (2009), "Learning Multiple Layers of Features from Tiny Images".
`load_cifar10(source="auto")` tries, in this order: a local `path` (the official python or
binary archive or its extracted folder, or image folders `train/<class>/*` and
`test/<class>/*`, plain or packed as `train.tgz` and `test.tgz`; a `SHA256SUMS` file beside
the archives is checked before anything is decoded); a decode cached by an earlier run; the
official archive already in the cache directory; tensorflow-datasets, when installed; and
the official archive, downloaded once and checked against its known SHA-256.

Canonical order is the official order for the archives and tfds, and by class, then file
name, for image folders. The sources in detail, and which module of this package does what:
docs/data.md.
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
