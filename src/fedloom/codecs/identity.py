"""``none``: raw little-endian float32, the lossless baseline every other codec is measured against.

4 bytes per value, no scales; as a chain's value stage it carries the kept values of a sparsifier.
"""

from __future__ import annotations

import numpy as np

from fedloom.codecs.base import CodecContext, ValueCodec, take

__all__ = ["Float32Values"]


class Float32Values(ValueCodec):
    """Values as fp32 bytes, bit-exact."""

    tag = 1
    token = "none"
    lossy = False

    def encode_values(self, values: np.ndarray, bounds: np.ndarray, ctx: CodecContext) -> bytes:
        return values.astype("<f4", copy=False).tobytes()

    def decode_values(self, buf: memoryview, bounds: np.ndarray) -> tuple[np.ndarray, int]:
        n = int(bounds[-1])
        raw = take(buf, 4 * n, "fp32 values")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32), 4 * n
