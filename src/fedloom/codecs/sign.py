"""``sign``: one bit per value plus one scale per tensor (scaled signSGD).

signSGD (Bernstein et al. 2018, "signSGD: Compressed Optimisation for Non-Convex Problems") sends
sign(x); EF-SignSGD (Karimireddy et al. 2019, "Error Feedback Fixes SignSGD and other Gradient
Compression Schemes", Algorithm 1, C(p) = (||p||_1 / d) * sign(p)) rescales it so the magnitude
survives. Here d is the tensor's number of (kept) values: per tensor t,

    C(x)_i = mean_j |x_j| * sign(x_i),   j over tensor t

Payload: one fp32 scale per tensor holding values, then the sign bits packed 8 per byte. One bit cannot
say "zero", so sign(0) is sent as +1 (as torch.sign would not); exact zeros therefore decode to +scale.
"""

from __future__ import annotations

import numpy as np

from fedloom.codecs.base import CodecContext, ValueCodec, nonempty_groups, take

__all__ = ["ScaledSign"]


class ScaledSign(ValueCodec):
    """Sign bits with a per-tensor mean-|x| scale."""

    tag = 3
    token = "sign"
    lossy = True

    def encode_values(self, values: np.ndarray, bounds: np.ndarray, ctx: CodecContext) -> bytes:
        starts, counts = nonempty_groups(bounds)
        if starts.size == 0:
            return b""
        l1 = np.add.reduceat(np.abs(values).astype(np.float64), starts)  # [groups] ||x_t||_1
        scale = (l1 / counts).astype("<f4")
        bits = np.packbits(values >= 0, bitorder="little")  # ceil(n / 8) bytes
        return scale.tobytes() + bits.tobytes()

    def decode_values(self, buf: memoryview, bounds: np.ndarray) -> tuple[np.ndarray, int]:
        starts, counts = nonempty_groups(bounds)
        n, head = int(bounds[-1]), 4 * starts.size
        scale = np.frombuffer(take(buf, head, "sign scales"), dtype="<f4").astype(np.float32)
        nbits = (n + 7) // 8
        raw = np.frombuffer(take(buf[head:], nbits, "sign bits"), dtype=np.uint8)
        positive = np.unpackbits(raw, count=n, bitorder="little").astype(bool)  # [n]
        magnitude = np.repeat(scale, counts)  # [n]
        return np.where(positive, magnitude, -magnitude), head + nbits
