"""Many clients' seeds at once: numpy's ``SeedSequence`` hash, vectorized over the client id.

:func:`fedloom.training.client_seed` derives each (run, round, client, purpose) seed as
``SeedSequence([seed, round, client, tag]).generate_state(1, uint64)[0] >> 1``: about 7–10 µs a client, a
millisecond a round for 100 clients. :func:`client_seeds` computes the same numbers for a whole cohort with
a few dozen numpy operations on ``[clients]`` arrays. The algorithm is numpy's (O'Neill's seed_seq_fe, as
``numpy.random.SeedSequence`` documents it: entropy words mixed into a pool of 4 words with a multiplicative
hash, then the pool hashed out into the state); tests/test_seeds.py checks it against ``client_seed``.

:func:`cohort_seeds` serves a small federation's rounds from a table of every (round, client) seed of a block
of ``_BLOCK`` rounds, hashed at once: a few clients a round cost ~8 µs each one at a time.
"""

from __future__ import annotations

import numpy as np

__all__ = ["client_seeds", "cohort_seeds"]

_POOL = 4
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_SHIFT = 16
_M32 = 0xFFFFFFFF
_VECTOR_FROM = 12  # clients from which the vectorized hash is faster than SeedSequence per client (measured)


def _words(value: int) -> list[int]:
    """A non-negative int as numpy's SeedSequence reads it: 32-bit words, least significant first (0: [0])."""
    if value < 0:
        raise ValueError(f"seeds are non-negative, got {value}")
    out = [value & _M32]
    value >>= 32
    while value:
        out.append(value & _M32)
        value >>= 32
    return out


class _Hash:
    """The hashmix of seed_seq_fe with its running constant (a Python int: the same for every client)."""

    def __init__(self) -> None:
        self.const = _INIT_A

    def __call__(self, value: np.ndarray) -> np.ndarray:
        value = value ^ np.uint32(self.const)
        self.const = (self.const * _MULT_A) & _M32
        value = value * np.uint32(self.const)
        return value ^ (value >> np.uint32(_SHIFT))


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    result = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
    return result ^ (result >> np.uint32(_SHIFT))


def client_seeds(seed: int, round: int, clients, tag: int) -> np.ndarray:
    """``[clients]`` int64: :func:`fedloom.training.client_seed` ``(seed, round, c, tag)`` of every client ``c``."""
    ids = np.asarray(clients, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() > _M32):
        raise ValueError("client ids must be in 0..2**32 - 1")
    n = ids.size
    if n < _VECTOR_FROM:  # numpy's own, one client at a time, is faster for a few
        states = [np.random.SeedSequence([seed, round, int(c), tag]).generate_state(1, np.uint64)[0] for c in ids]
        return (np.array(states, dtype=np.uint64) >> np.uint64(1)).astype(np.int64)
    return _hashed(seed, [np.full(n, w, dtype=np.uint32) for w in _words(round)], ids, tag)


def _hashed(seed: int, round_words: list[np.ndarray], ids: np.ndarray, tag: int) -> np.ndarray:
    """``[n]`` int64 seeds of entropy ``[seed, round, id, tag]``, the round's words and the ids given per entry."""
    n = ids.size
    fixed = [np.full(n, w, dtype=np.uint32) for w in _words(seed)]
    entropy = [*fixed, *round_words, ids.astype(np.uint32), *(np.full(n, w, dtype=np.uint32) for w in _words(tag))]
    with np.errstate(over="ignore"):  # uint32 arithmetic wraps, as the algorithm intends
        h = _Hash()
        pool = [h(entropy[i] if i < len(entropy) else np.zeros(n, np.uint32)) for i in range(_POOL)]
        for src in range(_POOL):
            for dst in range(_POOL):
                if src != dst:
                    pool[dst] = _mix(pool[dst], h(pool[src]))
        for src in range(_POOL, len(entropy)):
            for dst in range(_POOL):
                pool[dst] = _mix(pool[dst], h(entropy[src]))
        const, words = _INIT_B, []
        for i in range(2):  # one uint64 = two uint32 words, low first
            value = pool[i % _POOL] ^ np.uint32(const)
            const = (const * _MULT_B) & _M32
            value = value * np.uint32(const)
            words.append(value ^ (value >> np.uint32(_SHIFT)))
    state = words[0].astype(np.uint64) | (words[1].astype(np.uint64) << np.uint64(32))
    return (state >> np.uint64(1)).astype(np.int64)


_BLOCK, _TABLE_MAX = 32, 8192  # rounds per table; seeds per table at most (clients × _BLOCK)
_TABLES: dict[tuple, np.ndarray] = {}  # (seed, tag, clients, first round) → [_BLOCK, clients], a few recent


def cohort_seeds(seed: int, round: int, clients, tag: int, num_clients: int) -> np.ndarray:
    """:func:`client_seeds` for ``clients`` of a federation of ``num_clients``: read from a table of the block
    of ``_BLOCK`` rounds holding ``round`` (every client), made once, when that table is small."""
    ids = np.asarray(clients, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= num_clients):
        raise ValueError(f"client ids must be in 0..{num_clients - 1}")
    first = round - round % _BLOCK
    if num_clients * _BLOCK > _TABLE_MAX or first < 0 or first + _BLOCK > _M32 + 1:
        return client_seeds(seed, round, ids, tag)
    key = (seed, tag, num_clients, first)
    table = _TABLES.get(key)
    if table is None:
        rounds = np.repeat(np.arange(first, first + _BLOCK, dtype=np.uint32), num_clients)
        every = np.tile(np.arange(num_clients, dtype=np.int64), _BLOCK)
        if seed < 0 or tag < 0:
            raise ValueError(f"seeds are non-negative, got {min(seed, tag)}")
        table = _TABLES[key] = _hashed(seed, [rounds], every, tag).reshape(_BLOCK, num_clients)
        while len(_TABLES) > 8:
            del _TABLES[next(iter(_TABLES))]
    return table[round - first, ids]
