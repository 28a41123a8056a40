"""``topk:<fraction>``: keep the k largest-magnitude coordinates, k = max(1, round(fraction * params)).

Top-k sparsification as in Aji & Heafield 2017 ("Sparse Communication for Distributed Gradient
Descent") and Stich et al. 2018 ("Sparsified SGD with Memory", top_k operator, definition 2.1). Ties at
the k-th magnitude are broken by the lower index, so the selection is a pure function of the vector.

Indices travel in whichever of two formats is smaller for this payload (ties go to the bitmask):

* bitmask: ceil(params / 8) bytes, bit i set iff coordinate i is kept;
* gaps: LEB128 varints of ``index[j] - index[j-1] - 1`` (with index[-1] = -1), >= 1 byte per index.

Side bytes: k as uint32, a format byte (0 bitmask, 1 gaps), then the index bytes. Values follow in the
chain's value codec (fp32 unless chained, e.g. ``topk:0.01+q8``).
"""

from __future__ import annotations

import struct

import numpy as np

from fedloom.codecs._bits import decode_uvarints, encode_uvarints, uvarint_size
from fedloom.codecs.base import CodecContext, Selection, Sparsifier, kept_count, take

__all__ = ["TopK", "topk_indices", "BITMASK", "GAPS"]

BITMASK, GAPS = 0, 1  # index format byte
_HEAD = struct.Struct("<IB")  # k, index format


def topk_indices(magnitude: np.ndarray, k: int) -> np.ndarray:
    """Ascending indices of the k largest entries of ``magnitude``; ties go to lower indices. O(params)."""
    n = magnitude.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    threshold = np.partition(magnitude, n - k)[n - k]  # the k-th largest value
    above = np.flatnonzero(magnitude > threshold)  # fewer than k of these
    ties = np.flatnonzero(magnitude == threshold)[: k - above.size]  # lowest indices first
    return np.sort(np.concatenate([above, ties]))


class TopK(Sparsifier):
    """Largest-|x| coordinates with the cheaper of bitmask / gap-varint index coding."""

    tag = 1

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.token = f"topk:{fraction:g}"
        self.lossy = fraction < 1.0

    def select(self, x: np.ndarray, ctx: CodecContext) -> Selection:
        index = topk_indices(np.abs(x), kept_count(self.fraction, x.size))
        gaps = np.diff(index, prepend=-1) - 1  # [k] >= 0
        if uvarint_size(gaps) < (x.size + 7) // 8:
            return Selection(index, _HEAD.pack(index.size, GAPS) + encode_uvarints(gaps))
        mask = np.zeros(x.size, dtype=bool)
        mask[index] = True
        return Selection(index, _HEAD.pack(index.size, BITMASK) + np.packbits(mask, bitorder="little").tobytes())

    def read_index(self, buf: memoryview, ctx: CodecContext) -> tuple[np.ndarray, int]:
        params = ctx.layout.size
        k, fmt = _HEAD.unpack(take(buf, _HEAD.size, "topk header"))
        if k != kept_count(self.fraction, params):
            raise ValueError(f"payload keeps {k} values, {self.token} on {params} params keeps a different k")
        body = buf[_HEAD.size :]
        if fmt == BITMASK:
            nbytes = (params + 7) // 8
            raw = np.frombuffer(take(body, nbytes, "topk bitmask"), dtype=np.uint8)
            index = np.flatnonzero(np.unpackbits(raw, count=params, bitorder="little"))
        elif fmt == GAPS:
            gaps, nbytes = decode_uvarints(body, k)
            index = np.cumsum(gaps.astype(np.int64) + 1) - 1
        else:
            raise ValueError(f"unknown topk index format {fmt}")
        if index.size != k or (k and index[-1] >= params):
            raise ValueError("topk index set does not match its header")
        return index, _HEAD.size + nbytes
