"""Named PRNG streams: every random choice in an experiment has its own key.

Deriving each stream from the seed and a name (rather than splitting one key in sequence)
keeps streams independent of each other and of the order in which code asks for them — the
random-subset baseline never reuses the poisoning stream (a flaw of earlier code; see
docs/methods.md, "The reference experiment"), and adding a new stream never changes existing
ones.
"""

from __future__ import annotations

import zlib

import jax


def stream(seed: int, name: str) -> jax.Array:
    """A typed PRNG key for the stream `name` of experiment seed `seed`."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))
