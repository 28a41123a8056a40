"""``fp16``: values rounded to IEEE half precision (2 bytes each).

Round-to-nearest gives a relative error <= 2**-11 for |x| in the normal range [6.1e-5, 65504];
below it (subnormals) the absolute error is <= 2**-25. Values beyond +-65504 are clipped to it rather
than becoming inf, because one inf would poison the whole aggregate.
"""

from __future__ import annotations

import numpy as np

from fedloom.codecs.base import CodecContext, ValueCodec, take

__all__ = ["Float16Values"]

_FP16_MAX = float(np.finfo(np.float16).max)  # 65504


class Float16Values(ValueCodec):
    """Values as fp16 bytes."""

    tag = 2
    token = "fp16"
    lossy = True

    def encode_values(self, values: np.ndarray, bounds: np.ndarray, ctx: CodecContext) -> bytes:
        return np.clip(values, -_FP16_MAX, _FP16_MAX).astype("<f2").tobytes()

    def decode_values(self, buf: memoryview, bounds: np.ndarray) -> tuple[np.ndarray, int]:
        n = int(bounds[-1])
        raw = take(buf, 2 * n, "fp16 values")
        return np.frombuffer(raw, dtype="<f2").astype(np.float32), 2 * n
