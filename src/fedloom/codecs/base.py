"""Codec interfaces: how a flat update vector becomes bytes on the wire and back.

A ``Codec`` maps a ``[params]`` float32 vector to a compact ``bytes`` payload and back; the bytes of an
update are ``len(payload)``, measured by whoever sends it, never computed by a codec. Codecs are built
from two kinds of parts (STYLE.md §4: one symmetric pipeline, encode left to right, decode reversed):

* a ``Sparsifier`` picks which coordinates travel (top-k, rand-k, the book's fixed mask, the book's
  layer selection) and writes whatever the server needs to find them again;
* a ``ValueCodec`` turns a 1-D array of values into bytes (fp32, fp16, stochastic quantization, sign).

``chain.ChainCodec`` glues at most one sparsifier and one value codec into a ``Codec``; the value codec
then encodes only the kept values, grouped by the Layout tensor each value came from, so per-tensor
scales keep their meaning after sparsification.

Randomness: every draw comes from ``CodecContext.rng`` (seed, round, client, codec tag, and a direction word
for the broadcast), so the server can regenerate any index set that does not travel, and no global RNG is
touched (STYLE.md §9).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from fedloom.params import Layout

__all__ = [
    "CodecContext",
    "Decoded",
    "Codec",
    "ValueCodec",
    "Sparsifier",
    "Selection",
    "as_flat_numpy",
    "nonempty_groups",
    "take",
    "kept_count",
]


_DOWN = 0x444F574E  # 'DOWN': the direction word of the broadcast's streams


@dataclass(frozen=True)
class CodecContext:
    """Everything a codec may depend on besides the vector: the Layout and who/when for seeding."""

    layout: Layout
    client_id: int
    round: int
    seed: int  # the run seed
    down: bool = False  # the server's broadcast: its draws never coincide with any client's upload

    def __post_init__(self) -> None:
        # numpy SeedSequence rejects negative entropy; say which field is wrong instead.
        for field in ("client_id", "round", "seed"):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"CodecContext.{field} must be a non-negative int, got {value!r}")

    def rng(self, tag: int, *, per_round: bool = True) -> np.random.Generator:
        """A generator private to (seed, round, client, codec tag); ``per_round=False`` drops the round."""
        key = [self.seed, self.round, self.client_id, tag] if per_round else [self.seed, self.client_id, tag]
        # Upload keys stay as they were; the broadcast appends a direction word, so a q8 down codec and
        # client 0's q8 upload (the broadcast's client_id is 0) draw independent coins.
        return np.random.default_rng(key + [_DOWN] if self.down else key)


@dataclass
class Decoded:
    """A decoded update.

    ``values`` is ``[params]`` float32 with zeros where nothing was sent. ``present`` (``[params]`` bool)
    is set only by codecs whose method averages each coordinate over the clients that sent it (the
    book's layer selection, 15.3); ``None`` means "treat every coordinate as sent", which is also the
    right reading for top-k, rand-k and the book's mask, whose zeros are part of the estimate
    (rand-k's unbiasedness and the book's 15.5 server sum both count them).
    """

    values: torch.Tensor
    present: torch.Tensor | None = None


class Codec(ABC):
    """Vector ``[params]`` float32 <-> bytes. ``name`` is the spec it was parsed from."""

    name: str
    lossy: bool

    @abstractmethod
    def encode(self, vec: torch.Tensor, ctx: CodecContext) -> bytes:
        """Serialize ``vec`` (``[params]`` float32, never mutated) into a compact payload."""

    @abstractmethod
    def decode(self, payload: bytes, ctx: CodecContext) -> Decoded:
        """Rebuild the vector from ``payload`` and ``ctx`` alone."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ValueCodec(ABC):
    """Encodes a 1-D float32 array whose values are grouped by Layout tensor.

    ``bounds`` (``[tensors + 1]`` int) cuts ``values`` into one group per tensor: group t is
    ``values[bounds[t]:bounds[t+1]]`` and may be empty after sparsification. Decoding is given the same
    ``bounds`` (the decoder rebuilds them from the index set) and returns ``(values, bytes_used)``.
    """

    tag: int  # wire tag byte, unique among value codecs
    token: str  # spec token, e.g. "q8"
    lossy: bool

    @abstractmethod
    def encode_values(self, values: np.ndarray, bounds: np.ndarray, ctx: CodecContext) -> bytes: ...

    @abstractmethod
    def decode_values(self, buf: memoryview, bounds: np.ndarray) -> tuple[np.ndarray, int]: ...


@dataclass
class Selection:
    """What a sparsifier keeps: ``index`` ``[k]`` int64 ascending, and ``side`` bytes that locate it."""

    index: np.ndarray
    side: bytes


class Sparsifier(ABC):
    """Chooses the coordinates that travel; the values themselves go through a ``ValueCodec``."""

    tag: int  # wire tag byte, unique among sparsifiers (0 is reserved for "dense")
    token: str
    lossy: bool

    @abstractmethod
    def select(self, x: np.ndarray, ctx: CodecContext) -> Selection:
        """Pick coordinates of ``x`` (``[params]`` float32, read only)."""

    @abstractmethod
    def read_index(self, buf: memoryview, ctx: CodecContext) -> tuple[np.ndarray, int]:
        """Inverse of ``select``'s side bytes: ``(index [k] ascending, bytes_used)``."""

    def rescale(self, k: int, ctx: CodecContext) -> float:
        """Factor the decoder multiplies kept values by (1 unless the method is made unbiased)."""
        return 1.0

    def present(self, index: np.ndarray, ctx: CodecContext) -> np.ndarray | None:
        """``[params]`` bool for ``Decoded.present``, or None (see ``Decoded``)."""
        return None


def as_flat_numpy(vec: torch.Tensor, layout: Layout) -> np.ndarray:
    """``vec`` as a ``[params]`` float32 numpy array; may share memory with ``vec``, so treat as read only."""
    if vec.ndim != 1 or vec.numel() != layout.size:
        raise ValueError(f"expected a [{layout.size}] vector for this layout, got shape {tuple(vec.shape)}")
    return vec.detach().to(device="cpu", dtype=torch.float32).numpy()


def nonempty_groups(bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, counts)`` of the non-empty groups; value codecs store scales only for these."""
    counts = np.diff(bounds)
    keep = counts > 0
    return np.asarray(bounds[:-1][keep], dtype=np.int64), np.asarray(counts[keep], dtype=np.int64)


def take(buf: memoryview, nbytes: int, what: str) -> memoryview:
    """The first ``nbytes`` of ``buf``, or ValueError naming the truncated part."""
    if len(buf) < nbytes:
        raise ValueError(f"payload truncated: {what} needs {nbytes} bytes, {len(buf)} left")
    return buf[:nbytes]


def kept_count(fraction: float, params: int) -> int:
    """k = max(1, round(fraction * params)), rounding halves up (not Python's banker's rounding)."""
    return min(params, max(1, int(np.floor(fraction * params + 0.5))))
