"""Counter-based pseudo-random numbers shared by the procedural data sources.

The procedural sources (``shapes``, ``photos``) must give the *same* example for the same
``(seed, example id)`` no matter how the stream is sharded, shuffled or split across
DataLoader workers.  A counter-based generator gives that for free: the random numbers of
example ``i`` are a pure function of ``(seed, i)``, so any process can compute any example
without replaying the ones before it.  We use the SplitMix64 finaliser, on uint64 numpy arrays (vectorised) and on
Python ints (the training noise's per-step seeds, where numpy's per-call cost would dominate).
"""

from __future__ import annotations

import zlib

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x):
    """SplitMix64 finaliser: a bijective, well-mixed map of 64-bit words (Steele, Lea & Flood 2014).

    A Python int gives a Python int (in [0, 2**64)); anything else is read as uint64 and mixed elementwise.
    """
    if isinstance(x, int):
        return _splitmix64_finaliser(x & _MASK64)
    with np.errstate(over="ignore"):  # uint64 products wrap modulo 2**64, which is what the mixer needs
        return _splitmix64_finaliser(np.asarray(x, dtype=np.uint64))


def _splitmix64_finaliser(z):
    # The same lines for both kinds of word: `& _MASK64` keeps a Python int to 64 bits and is a no-op on uint64.
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
    return z ^ (z >> 31)


def seed_key(seed: int, salt: int) -> np.uint64:
    """Fold a user seed and a per-purpose salt into one uint64 key.

    Different salts give independent streams for independent purposes (drawing factors,
    assigning the held-out split, choosing crops) under the same user seed.
    """
    s = np.array([int(seed) & _MASK64], dtype=np.uint64)
    t = np.array([int(salt) & _MASK64], dtype=np.uint64)
    with np.errstate(over="ignore"):
        return mix64(mix64(s) ^ (t * _GOLDEN))[0]


def hash_ids(key: np.uint64, ids: np.ndarray, draw: int = 0) -> np.ndarray:
    """Return one uint64 per id: the ``draw``-th random word of example ``id`` under ``key``."""
    ids = np.asarray(ids, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = mix64(ids ^ np.uint64(key))
        return mix64(h + np.uint64(draw + 1) * _GOLDEN)


def uniform_ints(key: np.uint64, ids: np.ndarray, draw: int, high: int) -> np.ndarray:
    """Integers in ``[0, high)`` (int64), one per id.  Modulo bias is < high / 2**64."""
    if high <= 0:
        raise ValueError(f"high must be positive, got {high}")
    return (hash_ids(key, ids, draw) % np.uint64(high)).astype(np.int64)


def content_key(x: np.ndarray) -> int:
    """A 32-bit hash of an example's pixels: its key where it has no id (a streamed Hub or folder dataset has no
    stable example id once its shards are shuffled, but the pixels identify the example)."""
    return zlib.crc32(np.ascontiguousarray(x).view(np.uint8))
