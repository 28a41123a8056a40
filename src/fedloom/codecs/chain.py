"""Composition of an optional sparsifier and a value codec into one ``Codec``, and the payload framing.

A spec ``a+b`` applies ``a`` then ``b`` on encode and undoes them in reverse on decode. The legal shapes
are ``<value>``, ``<sparsifier>`` and ``<sparsifier>+<value>``: a sparsifier turns the vector into
(index set, kept values); the value codec then encodes only the kept values (``topk:0.01+q8`` quantizes
the 1 % kept values to 8 bits; the zeros never reach the quantizer). A lone sparsifier sends fp32 values.

Payload layout (little endian throughout)::

    byte 0   sparsifier tag (0 = dense)        byte 1   value codec tag
    sparsifier side bytes (index set; none for randk / mask, which the server regenerates from the seed)
    value codec bytes (per-tensor scales, then the packed values)

The value stage sees the kept values grouped by Layout tensor (``bounds``), so ``q<b>`` and ``sign`` keep
one scale per tensor even after sparsification. Decoding checks the tags and that every byte was used.
"""

from __future__ import annotations

import numpy as np
import torch

from fedloom.codecs.base import Codec, CodecContext, Decoded, Sparsifier, ValueCodec, as_flat_numpy

__all__ = ["ChainCodec"]


class ChainCodec(Codec):
    """``[sparsifier +] value codec``; every spec parses to one of these."""

    def __init__(self, name: str, sparsifier: Sparsifier | None, values: ValueCodec) -> None:
        self.name = name
        self.sparsifier = sparsifier
        self.values = values
        self.lossy = values.lossy or (sparsifier is not None and sparsifier.lossy)
        self._head = bytes([0 if sparsifier is None else sparsifier.tag, values.tag])

    def encode(self, vec: torch.Tensor, ctx: CodecContext) -> bytes:
        x = as_flat_numpy(vec, ctx.layout)  # [params], read only (may alias vec)
        offsets = np.asarray(ctx.layout.offsets, dtype=np.int64)  # [tensors + 1]
        if self.sparsifier is None:
            return self._head + self.values.encode_values(x, offsets, ctx)
        sel = self.sparsifier.select(x, ctx)
        bounds = np.searchsorted(sel.index, offsets)  # [tensors + 1] cuts of the kept values by tensor
        return b"".join([self._head, sel.side, self.values.encode_values(x[sel.index], bounds, ctx)])

    def decode(self, payload: bytes, ctx: CodecContext) -> Decoded:
        if bytes(payload[:2]) != self._head:
            raise ValueError(f"payload tags {bytes(payload[:2]).hex()} do not match codec {self.name!r}")
        buf = memoryview(payload)[2:]
        offsets = np.asarray(ctx.layout.offsets, dtype=np.int64)
        if self.sparsifier is None:
            dense, used = self.values.decode_values(buf, offsets)
            self._check_used(buf, used)
            return Decoded(torch.from_numpy(np.array(dense, dtype=np.float32)))
        index, side = self.sparsifier.read_index(buf, ctx)
        kept, used = self.values.decode_values(buf[side:], np.searchsorted(index, offsets))
        self._check_used(buf, side + used)
        out = np.zeros(ctx.layout.size, dtype=np.float32)  # [params], zeros where nothing was sent
        scale = self.sparsifier.rescale(index.size, ctx)
        out[index] = kept if scale == 1.0 else kept * np.float32(scale)
        present = self.sparsifier.present(index, ctx)
        return Decoded(torch.from_numpy(out), None if present is None else torch.from_numpy(present))

    def _check_used(self, buf: memoryview, used: int) -> None:
        if used != len(buf):
            raise ValueError(f"codec {self.name!r} used {used} of {len(buf)} payload bytes after the tags")
