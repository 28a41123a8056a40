"""``layers:<rate>``: send only the tensors with the largest |mean(diff)| (the book, section 15.3).

The book's client sorts its diff tensors by ``abs(torch.mean(diff))`` in descending order (Python's
stable ``sorted``, so ties keep model order) and returns ``diff[:int(rate * len(diff))]``: it counts
tensors, not parameters, and rounds *down* with ``int()``. fedloom keeps that rule but sends at least one
tensor, where the book would send nothing for rate < 1 / tensors. Like the book, which ranks every ``state_dict``
entry, the Layout's tensors include BatchNorm's running statistics (its integer ``num_batches_tracked``,
which the book also ranks, does not travel; see :mod:`fedloom.params`). The server averages each tensor
over the clients that sent it, so ``Decoded.present`` marks the sent tensors' coordinates.

Side bytes: a bitmask over the Layout's tensors, ceil(tensors / 8) bytes. Values of the sent tensors
follow, in Layout order, in the chain's value codec.
"""

from __future__ import annotations

import numpy as np

from fedloom.codecs.base import CodecContext, Selection, Sparsifier, take

__all__ = ["LayerSelect", "layers_kept"]


def layers_kept(rate: float, tensors: int) -> int:
    """Number of tensors sent: the book's ``int(rate * tensors)``, but at least 1."""
    return min(tensors, max(1, int(rate * tensors)))


class LayerSelect(Sparsifier):
    """Top ``rate`` fraction of tensors by |mean|, sent whole."""

    tag = 4

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.token = f"layers:{rate:g}"
        self.lossy = rate < 1.0

    def chosen(self, x: np.ndarray, ctx: CodecContext) -> np.ndarray:
        """``[tensors]`` bool: the ``layers_kept`` tensors with the largest |mean|, ties to lower index."""
        sizes = np.asarray(ctx.layout.sizes, dtype=np.int64)
        offsets = np.asarray(ctx.layout.offsets[:-1], dtype=np.int64)
        sums = np.zeros(sizes.size)
        full = sizes > 0  # reduceat cannot express an empty tensor; its mean counts as 0
        sums[full] = np.add.reduceat(x.astype(np.float64), offsets[full])
        mean_abs = np.abs(sums / np.maximum(sizes, 1))  # [tensors]
        order = np.argsort(-mean_abs, kind="stable")
        chosen = np.zeros(sizes.size, dtype=bool)
        chosen[order[: layers_kept(self.rate, sizes.size)]] = True
        return chosen

    def _index(self, chosen: np.ndarray, ctx: CodecContext) -> np.ndarray:
        per_param = np.repeat(chosen, ctx.layout.sizes)  # [params] bool
        return np.flatnonzero(per_param)

    def select(self, x: np.ndarray, ctx: CodecContext) -> Selection:
        chosen = self.chosen(x, ctx)
        return Selection(self._index(chosen, ctx), np.packbits(chosen, bitorder="little").tobytes())

    def read_index(self, buf: memoryview, ctx: CodecContext) -> tuple[np.ndarray, int]:
        tensors = len(ctx.layout)
        nbytes = (tensors + 7) // 8
        raw = np.frombuffer(take(buf, nbytes, "layer bitmask"), dtype=np.uint8)
        chosen = np.unpackbits(raw, count=tensors, bitorder="little").astype(bool)
        if chosen.sum() != layers_kept(self.rate, tensors):
            raise ValueError(f"payload sends {chosen.sum()} tensors, {self.token} sends a different number")
        return self._index(chosen, ctx), nbytes

    def present(self, index: np.ndarray, ctx: CodecContext) -> np.ndarray:
        mask = np.zeros(ctx.layout.size, dtype=bool)
        mask[index] = True
        return mask
