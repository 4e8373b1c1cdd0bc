"""Counter-based randomness: every random choice is a hash of (seed, round, id, purpose).

This is what makes selections independent of the number of actors, blocks and batch sizes: no random stream
is consumed in an order that depends on how the work was split.
"""

from __future__ import annotations

import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return x ^ (x >> np.uint64(31))


def hash_ids(ids: np.ndarray, seed: int, round_: int, purpose: int = 0) -> np.ndarray:
    """uint64 hash per id, a pure function of (seed, round, purpose, id)."""
    key = _splitmix64(np.array([(seed << 20) ^ (round_ << 4) ^ purpose], dtype=np.uint64))[0]
    return _splitmix64(np.asarray(ids, dtype=np.int64).view(np.uint64) ^ key)


def uniform(ids: np.ndarray, seed: int, round_: int, purpose: int = 0) -> np.ndarray:
    """Floats in [0, 1) from the top 53 bits of the hash."""
    return (hash_ids(ids, seed, round_, purpose) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# Purposes keep the streams of different decisions independent of each other.
PURPOSE_SEED = 1
PURPOSE_NEIGHBOUR = 2
PURPOSE_SUBSET = 4
PURPOSE_TAU = 5
PURPOSE_INDEX_SAMPLE = 6
PURPOSE_RANDOM = 7
PURPOSE_MC_DROPOUT = 8
PURPOSE_FILL = 10
PURPOSE_CANDIDATES = 11
PURPOSE_SHARD = 12


def uniform_matrix(ids: np.ndarray, columns: int, seed: int, round_: int, purpose: int = 0) -> np.ndarray:
    """(len(ids), columns) floats in [0, 1): `columns` independent draws per id, still a pure function of
    (seed, round, purpose, id, column), so how ids are batched never changes them."""
    base = hash_ids(ids, seed, round_, purpose)[:, None]
    with np.errstate(over="ignore"):
        salt = (np.arange(1, columns + 1, dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)) & _MASK
    return (_splitmix64(base ^ salt[None, :]) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
