"""Image folders `train/<class>/*.{png,jpg}` and `test/<class>/*`, as folders or `.tgz` files.

Canonical order is by class in CIFAR-10 label order, then by file name (the order the shared
JPEG copy documents for its indices).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxbd.data.cifar10.decode import ImageDecoder
from jaxbd.data.cifar10.decoded import Decoded
from jaxbd.data.cifar10.formats import CLASS_NAMES, IMAGE_EXTENSIONS, NUM_CLASSES, SPLITS
from jaxbd.data.cifar10.tar import iter_tar, member_parts
from jaxbd.data.dataset import DataError


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """One encoded image of a split, with the label its class folder gives it."""

    label: int
    name: str  # file name within its class folder: the sort key after the label
    where: str  # archive member or file path, for error messages
    data: bytes


def decode_image_folders(
    sources: dict[str, Path],
    collect: Callable[[Path, str], list[ImageFile]],
    form: str,
) -> Decoded:
    """Decodes the train and test image folders.

    Args:
        sources: the `.tgz` file or folder of each split ("train", "test").
        collect: reads one split's files: `collect_archive` or `collect_dir`.
        form: what the source string calls this layout.
    """
    arrays = []
    with ImageDecoder() as decoder:  # one worker pool, if any, for both splits
        for split in SPLITS:
            files = collect(sources[split], split)
            arrays += _assemble(files, split, str(sources[split]), decoder)
    return Decoded(*arrays, form=form)


def collect_archive(archive: Path, split: str) -> list[ImageFile]:
    """The images of `split` in a `<split>.tgz`, read in memory, in archive order."""
    files = []
    for member, data in iter_tar(archive):
        parts = member_parts(member.name)
        where = f"{member.name} in {archive}"
        if member.isdir():
            if len(parts) == 2 and parts[0] == split and not parts[1].startswith("."):
                _class_label(parts[1], where)  # an unknown class folder fails even if empty
        elif data is None:
            raise DataError(f"unexpected member {where}: links and devices are not supported")
        elif (label_name := _classify(parts, split, where)) is not None:
            files.append(ImageFile(*label_name, where=where, data=data))
    return files


def collect_dir(folder: Path, split: str) -> list[ImageFile]:
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
                files.append(ImageFile(*label_name, where=str(file), data=file.read_bytes()))
    return files


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


def _assemble(
    files: list[ImageFile], split: str, where: str, decoder: ImageDecoder
) -> tuple[np.ndarray, np.ndarray]:
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
    images = decoder.decode([f.data for f in files], [f.where for f in files])
    labels = np.array([f.label for f in files], np.int32)
    return images, labels
