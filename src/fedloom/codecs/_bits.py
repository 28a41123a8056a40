"""Vectorized bit packing and LEB128 varints, the two compact integer formats the codecs use.

Both are little-endian bit orders so that packing b-bit codes is one ``unpackbits``/``packbits`` pair
(no Python loop over values). Varints are unsigned LEB128 (7 payload bits per byte, high bit set on all
but the last byte of a number), as in Protocol Buffers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pack_codes", "unpack_codes", "uvarint_size", "encode_uvarints", "decode_uvarints"]


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack ``codes`` (``[n]`` uint8, each < 2**bits) into ``ceil(n * bits / 8)`` bytes."""
    codes = codes.astype(np.uint8, copy=False)
    planes = np.empty((codes.size, bits), dtype=np.uint8)  # [n, bits], least significant bit first
    for j in range(bits):  # column shifts: ~10x faster than unpackbits(axis=1) on [n, 1]
        planes[:, j] = (codes >> j) & 1
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_codes(buf: memoryview, n: int, bits: int) -> tuple[np.ndarray, int]:
    """Inverse of ``pack_codes``: ``(codes [n] uint8, bytes_used)``."""
    nbytes = (n * bits + 7) // 8
    if len(buf) < nbytes:
        raise ValueError(f"payload truncated: {n} codes of {bits} bits need {nbytes} bytes, {len(buf)} left")
    raw = np.frombuffer(buf[:nbytes], dtype=np.uint8)
    planes = np.unpackbits(raw, count=n * bits, bitorder="little").reshape(n, bits)  # [n, bits]
    codes = planes[:, 0].copy()
    for j in range(1, bits):
        codes |= planes[:, j] << j
    return codes, nbytes


def _varint_lengths(v: np.ndarray) -> np.ndarray:
    """Bytes each value of ``v`` (uint64) takes as LEB128: 1 + number of 7-bit thresholds passed."""
    lengths = np.ones(v.size, dtype=np.int64)
    for j in range(1, 10):  # 10 bytes cover 64 bits
        lengths += v >= np.uint64(1) << np.uint64(7 * j)
    return lengths


def uvarint_size(v: np.ndarray) -> int:
    """Total LEB128 bytes for ``v`` without building them (to choose an index format)."""
    return int(_varint_lengths(v.astype(np.uint64)).sum())


def encode_uvarints(v: np.ndarray) -> bytes:
    """LEB128-encode every value of ``v`` (non-negative ints) back to back."""
    v = v.astype(np.uint64)
    if v.size == 0:
        return b""
    lengths = _varint_lengths(v)
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), dtype=np.uint8)
    for j in range(int(lengths.max())):  # j-th byte of every value long enough to have one
        sel = lengths > j
        chunk = (v[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = (lengths[sel] - 1 > j).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + j] = (chunk | more).astype(np.uint8)
    return out.tobytes()


def decode_uvarints(buf: memoryview, count: int) -> tuple[np.ndarray, int]:
    """Read ``count`` LEB128 values from the start of ``buf``: ``(values [count] uint64, bytes_used)``."""
    if count == 0:
        return np.zeros(0, dtype=np.uint64), 0
    raw = np.frombuffer(buf, dtype=np.uint8)
    ends = np.flatnonzero(raw < 0x80)[:count]  # last byte of each number
    if ends.size < count:
        raise ValueError(f"payload truncated: expected {count} varints, found {ends.size}")
    used = int(ends[-1]) + 1
    starts = np.concatenate([[0], ends[:-1] + 1])  # [count]
    pos = np.arange(used) - np.repeat(starts, ends - starts + 1)  # byte position inside its number
    contrib = (raw[:used] & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    return np.add.reduceat(contrib, starts), used
