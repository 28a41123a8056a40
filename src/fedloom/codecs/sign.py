"""``sign``: one bit per value plus one scale per tensor (scaled signSGD), zero-aware.

signSGD (Bernstein et al. 2018, "signSGD: Compressed Optimisation for Non-Convex Problems") sends
sign(x); EF-SignSGD (Karimireddy et al. 2019, "Error Feedback Fixes SignSGD and other Gradient
Compression Schemes", Algorithm 1, C(p) = (||p||_1 / d) * sign(p)) rescales it so the magnitude
survives. Here, per tensor t (its kept values, after any sparsifier):

    C(x)_i = s_t * sign(x_i),   s_t = ||x_t||_1 / nnz(x_t),   sign(0) = 0

so exact zeros stay zero (ternary sign, as torch.sign) and ||C(x_t)||_1 = ||x_t||_1. A tensor without exact
zeros gets s_t = mean |x| and costs one bit per value, exactly EF-SignSGD's operator. Exact zeros are common
in updates (20-33 % of an MLP's: weights fed by always-zero input pixels, dead ReLUs); a one-bit sign would
send them as +s_t and those weights would drift every round although no client ever moved them.

Payload: one fp32 scale per tensor holding values, then the sign bits of all values packed 8 per byte
(1 = non-negative), then, only for the tensors that hold both zeros and non-zeros, their non-zero bits packed
8 per byte. Such a tensor is flagged by a negative scale (the sign bit of a scale that is otherwise >= 0), so a
tensor without zeros costs what it did with a plain one-bit sign.
"""

from __future__ import annotations

import numpy as np

from fedloom.codecs.base import CodecContext, ValueCodec, nonempty_groups, take

__all__ = ["ScaledSign"]


class ScaledSign(ValueCodec):
    """Sign bits with a per-tensor mean-|x| scale over the non-zero values; zeros decode to zero."""

    tag = 3
    token = "sign"
    lossy = True

    def encode_values(self, values: np.ndarray, bounds: np.ndarray, ctx: CodecContext) -> bytes:
        starts, counts = nonempty_groups(bounds)
        if starts.size == 0:
            return b""
        l1 = np.add.reduceat(np.abs(values).astype(np.float64), starts)  # [groups] ||x_t||_1
        nonzero = values != 0  # [n]
        nnz = np.add.reduceat(nonzero.astype(np.int64), starts)  # [groups]
        scale = (l1 / np.maximum(nnz, 1)).astype("<f4")  # all-zero tensor: l1 = 0, scale 0
        mixed = (nnz > 0) & (nnz < counts)  # [groups] tensors that need their non-zero bits
        scale[mixed] = -scale[mixed]  # flag (scales are otherwise >= 0)
        bits = np.packbits(values >= 0, bitorder="little")  # ceil(n / 8) bytes
        in_mixed = np.repeat(mixed, counts)  # [n]
        zero_bits = np.packbits(nonzero[in_mixed], bitorder="little") if mixed.any() else np.zeros(0, np.uint8)
        return scale.tobytes() + bits.tobytes() + zero_bits.tobytes()

    def decode_values(self, buf: memoryview, bounds: np.ndarray) -> tuple[np.ndarray, int]:
        starts, counts = nonempty_groups(bounds)
        n, head = int(bounds[-1]), 4 * starts.size
        signed_scale = np.frombuffer(take(buf, head, "sign scales"), dtype="<f4").astype(np.float32)
        nbits = (n + 7) // 8
        raw = np.frombuffer(take(buf[head:], nbits, "sign bits"), dtype=np.uint8)
        positive = np.unpackbits(raw, count=n, bitorder="little").astype(bool)  # [n]
        mixed = np.signbit(signed_scale)  # [groups]
        magnitude = np.repeat(np.abs(signed_scale), counts)  # [n]
        out = np.where(positive, magnitude, -magnitude)
        used = head + nbits
        if mixed.any():
            in_mixed = np.repeat(mixed, counts)  # [n]
            m = int(in_mixed.sum())
            raw = np.frombuffer(take(buf[used:], (m + 7) // 8, "sign non-zero bits"), dtype=np.uint8)
            keep = np.ones(n, dtype=bool)
            keep[in_mixed] = np.unpackbits(raw, count=m, bitorder="little").astype(bool)
            out = np.where(keep, out, np.float32(0))
            used += (m + 7) // 8
        return out, used
