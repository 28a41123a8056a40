"""``mask:<prop>``: the book's fixed random mask (Practicing Federated Learning, section 15.5).

Each client draws once a Bernoulli(prop) 0/1 mask over all parameters and multiplies it into every
upload (the book's ``diff[name] * self.mask[name]``); the server sums the masked diffs as usual, zeros
included, with no rescaling (so, as in the book, the update shrinks by about prop in expectation).
Unlike the book's unseeded ``torch.bernoulli``, the mask comes from ``ctx.rng`` seeded by (seed,
client) but not the round, so it is fixed across rounds and the server regenerates it: only the kept
values travel, no index bytes. Error feedback is refused on a lossy mask (``mask:P+ef``): the coordinates
a client's mask drops are never sent, so their residual would only grow.
"""

from __future__ import annotations

import numpy as np

from fedloom.codecs.base import CodecContext, Selection, Sparsifier

__all__ = ["FixedMask"]

_RNG_TAG = 0x4D  # 'M'


class FixedMask(Sparsifier):
    """Per-client Bernoulli(prop) mask, fixed for the whole run; kept values not rescaled."""

    tag = 3

    def __init__(self, prop: float) -> None:
        self.prop = prop
        self.token = f"mask:{prop:g}"
        self.lossy = prop < 1.0

    def mask(self, ctx: CodecContext) -> np.ndarray:
        """The client's ``[params]`` bool mask; uniform draws in [0, 1) so prop = 1 keeps everything."""
        return ctx.rng(_RNG_TAG, per_round=False).random(ctx.layout.size) < self.prop

    def select(self, x: np.ndarray, ctx: CodecContext) -> Selection:
        return Selection(np.flatnonzero(self.mask(ctx)), b"")

    def read_index(self, buf: memoryview, ctx: CodecContext) -> tuple[np.ndarray, int]:
        return np.flatnonzero(self.mask(ctx)), 0
