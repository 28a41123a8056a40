"""``randk:<fraction>``: k coordinates drawn uniformly without replacement each round, rescaled by params/k.

Random-k sparsification (Stich et al. 2018, "Sparsified SGD with Memory", rand_k, definition 2.1;
Wangni et al. 2018). The index set comes from ``ctx.rng`` (seed, round, client), so the server draws the
same set and indices cost zero bytes; only the k values travel. Each coordinate is kept with probability
k / params, so the decoder multiplies kept values by params / k to make E[decoded] = x (the unbiased
variant; Stich et al.'s memory variant leaves them unscaled). The scaled operator is not a contraction
(E||C(x) - x||^2 = (params/k - 1) ||x||^2), so error feedback on top of it diverges when k < params / 2:
``ErrorFeedback`` refuses it (``randk:F+ef`` is a config error); use topk with error feedback.
"""

from __future__ import annotations

import numpy as np

from fedloom.codecs.base import CodecContext, Selection, Sparsifier, kept_count

__all__ = ["RandK"]

_RNG_TAG = 0x52  # 'R'


class RandK(Sparsifier):
    """Seeded uniform k-subset per (round, client); values scaled by params / k on decode."""

    tag = 2

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.token = f"randk:{fraction:g}"
        self.lossy = fraction < 1.0

    def _index(self, ctx: CodecContext) -> np.ndarray:
        params = ctx.layout.size
        k = kept_count(self.fraction, params)
        return np.sort(ctx.rng(_RNG_TAG).choice(params, size=k, replace=False)).astype(np.int64)

    def select(self, x: np.ndarray, ctx: CodecContext) -> Selection:
        return Selection(self._index(ctx), b"")

    def read_index(self, buf: memoryview, ctx: CodecContext) -> tuple[np.ndarray, int]:
        return self._index(ctx), 0

    def rescale(self, k: int, ctx: CodecContext) -> float:
        return ctx.layout.size / k
