"""``q<b>``: unbiased stochastic uniform quantization to b bits per value, one range per tensor.

QSGD (Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via Gradient Quantization and
Encoding", eq. (1)-(2)) rounds each value stochastically to one of s levels so that E[Q(x)] = x. QSGD
spaces its levels over [0, ||v||_2] and sends a sign bit separately; here the 2**b levels span the
tensor's [min, max] instead (the k-level stochastic quantizer of Suresh et al. 2017, "Distributed Mean
Estimation with Limited Communication", section 3), which spends every one of the b bits on magnitude
and keeps q1 meaningful. Per tensor t with range [lo, hi] and s = 2**b - 1 steps of size
delta = (hi - lo) / s:

    u = (x - lo) / delta,   Q(x) = lo + delta * (floor(u) + Bernoulli(u - floor(u)))

so E[Q(x)] = x and |Q(x) - x| < delta per value. Payload per tensor holding values: lo, hi as fp32
(8 bytes); then all codes bit-packed, b bits each (ceil(n * b / 8) bytes). Tensors left empty by a
sparsifier cost nothing. The coin flips come from ``ctx.rng`` (seed, round, client).
"""

from __future__ import annotations

import numpy as np

from fedloom.codecs._bits import pack_codes, unpack_codes
from fedloom.codecs.base import CodecContext, ValueCodec, nonempty_groups, take

__all__ = ["StochasticQuantizer"]

_RNG_TAG = 0x51  # 'Q': separates this stream from other codecs' draws in the same round


class StochasticQuantizer(ValueCodec):
    """b-bit unbiased stochastic rounding over each tensor's [min, max]."""

    lossy = True

    def __init__(self, bits: int) -> None:
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be 1..8, got {bits}")
        self.bits = bits
        self.levels = (1 << bits) - 1  # s: number of steps between lo and hi
        self.tag = 0x10 | bits
        self.token = f"q{bits}"

    def encode_values(self, values: np.ndarray, bounds: np.ndarray, ctx: CodecContext) -> bytes:
        starts, counts = nonempty_groups(bounds)
        if starts.size == 0:
            return b""
        lo = np.minimum.reduceat(values, starts).astype(np.float32)  # [groups]
        hi = np.maximum.reduceat(values, starts).astype(np.float32)
        # Steps are computed in float64 from the fp32 lo/hi that travel, exactly as the decoder does.
        step = (hi.astype(np.float64) - lo) / self.levels  # [groups]
        lo_v, step_v = np.repeat(lo.astype(np.float64), counts), np.repeat(step, counts)  # [n]
        u = np.divide(values - lo_v, step_v, out=np.zeros_like(lo_v), where=step_v > 0)  # [n] in [0, s]
        floor = np.floor(u)
        up = ctx.rng(_RNG_TAG).random(u.size) < (u - floor)  # Bernoulli(frac): makes E[Q(x)] = x
        codes = np.clip(floor + up, 0, self.levels).astype(np.uint8)
        return np.stack([lo, hi], axis=1).astype("<f4").tobytes() + pack_codes(codes, self.bits)

    def decode_values(self, buf: memoryview, bounds: np.ndarray) -> tuple[np.ndarray, int]:
        starts, counts = nonempty_groups(bounds)
        head = 8 * starts.size
        ranges = np.frombuffer(take(buf, head, "q ranges"), dtype="<f4").reshape(-1, 2)  # [groups, 2]
        lo = ranges[:, 0].astype(np.float64)
        step = (ranges[:, 1].astype(np.float64) - lo) / self.levels
        codes, used = unpack_codes(buf[head:], int(bounds[-1]), self.bits)
        values = np.repeat(lo, counts) + codes * np.repeat(step, counts)  # [n]
        return values.astype(np.float32), head + used
