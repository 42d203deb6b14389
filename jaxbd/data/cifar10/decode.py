"""Decoding PNG/JPEG images into uint8[N, 32, 32, 3], in a process pool when it pays.

PIL's per-image work is mostly Python (header parsing, object set-up) that holds the GIL, so
threads do not speed it up (on the shared JPEG copy two threads were slower than one);
processes do, when there are idle cores. The pool is a
standard `concurrent.futures.ProcessPoolExecutor` running the module-level `decode_chunk`,
started with "spawn": "fork" is unsafe once JAX has started its threads. As with any spawned
worker, a script that decodes in parallel must keep its work under `if __name__ ==
"__main__":`; if the pool cannot run, decoding falls back to the calling process.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from PIL import Image

from jaxbd.data.cifar10.formats import IMAGE_SHAPE
from jaxbd.data.dataset import DataError

logger = logging.getLogger(__name__)

# Decode in worker processes only with this many images and cores. Below, starting the workers
# (a fresh interpreter importing NumPy, Pillow and this package each) and sending the images
# costs about as much as it saves: with 2 busy cores the workers lost.
_PARALLEL_DECODE_MIN = 4096
_PARALLEL_DECODE_MIN_CORES = 4
_MAX_WORKERS = 16


def decode_chunk(blobs: list[bytes]) -> tuple[np.ndarray | None, int, str]:
    """Decodes encoded images; the function worker processes run.

    Args:
        blobs: n encoded PNG or JPEG images.

    Returns:
        (uint8[n, 32, 32, 3], -1, "") on success, or (None, index, message) for the first bad
        image (an error travels back as data, so the caller can name the file).
    """
    out = np.empty((len(blobs), *IMAGE_SHAPE), np.uint8)
    for i, blob in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(blob), formats=("PNG", "JPEG")) as image:
                # Check the header before decoding, so a huge image is never decompressed.
                shape = (image.size[1], image.size[0], len(image.getbands()))
                if shape != IMAGE_SHAPE or image.mode != "RGB":
                    message = f"unexpected image shape {shape} (mode {image.mode})"
                    return None, i, f"{message}: expected {IMAGE_SHAPE} RGB"
                out[i] = np.asarray(image)
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            return None, i, f"cannot decode image: {type(e).__name__}: {e}"
    return out, -1, ""


class ImageDecoder:
    """Decodes batches of images; a context manager owning the worker pool, if one is started.

    The pool starts on the first batch large enough to use it and serves every later batch
    (the train and the test split of one load), so its start-up is paid once.
    """

    def __init__(self):
        self._workers = min(_num_workers(), _MAX_WORKERS)
        self._pool: ProcessPoolExecutor | None = None
        self._pool_failed = False

    def __enter__(self) -> ImageDecoder:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def decode(self, blobs: list[bytes], names: list[str]) -> np.ndarray:
        """Decodes `blobs` into uint8[N, 32, 32, 3], in order.

        Args:
            blobs: N encoded PNG or JPEG images.
            names: the N files' names (paths or archive members), for error messages.

        Raises:
            DataError: naming the first image that is undecodable or not 32x32 RGB.
        """
        results = None
        if self._use_pool(len(blobs)):
            results = self._decode_in_pool(blobs)
        if results is None:
            results = [(0, decode_chunk(blobs))]
        for start, (out, index, message) in results:
            if out is None:
                raise DataError(f"{message} ({names[start + index]})")
        return np.concatenate([out for _, (out, _, _) in results])

    def _use_pool(self, num_images: int) -> bool:
        return (
            not self._pool_failed
            and self._workers >= _PARALLEL_DECODE_MIN_CORES
            and num_images >= _PARALLEL_DECODE_MIN
        )

    def _decode_in_pool(self, blobs: list[bytes]) -> list[tuple[int, tuple]] | None:
        """[(start index, `decode_chunk` result)] per chunk, or None if the pool failed."""
        size = -(-len(blobs) // self._workers)
        starts = range(0, len(blobs), size)
        try:
            if self._pool is None:
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(self._workers, mp_context=context)
            futures = [self._pool.submit(decode_chunk, blobs[i : i + size]) for i in starts]
            return [(start, future.result()) for start, future in zip(starts, futures, strict=True)]
        except (BrokenProcessPool, OSError) as e:
            logger.warning("parallel image decoding failed (%s); decoding in-process", e)
            self._pool_failed = True
            return None


def _num_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # Not on Linux.
        return os.cpu_count() or 1
