"""Counter-based pseudo-random numbers shared by the procedural data sources.

The procedural sources (``shapes``, ``photos``) must give the *same* example for the same
``(seed, example id)`` no matter how the stream is sharded, shuffled or split across
DataLoader workers.  A counter-based generator gives that for free: the random numbers of
example ``i`` are a pure function of ``(seed, i)``, so any process can compute any example
without replaying the ones before it.  We use the SplitMix64 finaliser, vectorised in numpy
(uint64 arithmetic wraps modulo 2**64, which is exactly what the mixer needs).
"""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective, well-mixed map uint64 -> uint64 (vectorised)."""
    z = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


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
