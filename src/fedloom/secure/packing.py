"""BatchCrypt-style quantize-and-pack: many fixed-point values per Paillier plaintext.

Zhang et al., "BatchCrypt: Efficient Homomorphic Encryption for Cross-Silo Federated Learning", USENIX ATC
2020, §4: clip each value to [−c, c], quantize it to b bits, and lay the integers side by side in one big
plaintext with enough zero headroom per slot that adding the plaintexts of several clients (one Paillier
multiplication of ciphertexts) adds the slots without a carry reaching the next slot.

Quantization (offset binary rather than BatchCrypt's signed slots, so every slot stays non-negative and
carry-freedom is a one-line proof). With L = 2^b − 1 levels and step Δ = 2c/L:

    u = (clip(x, −c, c) + c) / Δ ∈ [0, L],     q = ⌊u⌋ + [ξ < u − ⌊u⌋],  ξ ~ U[0, 1)     (stochastic rounding)
    x̂ = q·Δ − c,   and for a sum of k vectors   Σx̂ = (Σq)·Δ − k·c.

Error bound: E[q] = u, so x̂ is unbiased for clip(x); q is one of the two neighbours of u, so
|x̂ − clip(x)| < Δ = 2c/(2^b − 1) per value (round-to-nearest would give Δ/2, but is biased). For a sum of
k vectors the errors are independent: |Σx̂ − Σclip(x)| < k·Δ, standard deviation ≤ Δ·√k / 2. Values with
|x| > c also lose |x| − c; `encode` counts them. Example: b = 16, c = 1 gives Δ ≈ 3.05e-5.

Slots: each holds a sum of at most k = ``max_summands`` values q ≤ L, so Σq ≤ k·L < 2^(b + h) with
h = ⌈log2 k⌉ headroom bits; slot width w = b + h, and S = ⌊(key_bits − 2)/w⌋ slots keep the packed integer
below 2^(key_bits − 2) < n/2 (n has exactly key_bits bits), hence below n even after k additions. Value j
of a chunk sits in bits [j·w, (j+1)·w): the first value is in the lowest slot. b = 16, k = 16, 2048-bit key:
w = 20, S = 102 values per ciphertext, ~5 bytes per value on the wire instead of 512.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Packer"]

_MAX_BITS = 32  # quantized values and their k-fold sums must fit the uint64 slot arithmetic below
_MAX_SLOT_BITS = 64


@dataclass(frozen=True)
class Packer:
    """Quantize float vectors to ``bits``-bit slots and pack ``slots`` of them per Paillier plaintext.

    Parameters map to BatchCrypt's symbols: ``bits`` = b (quantization bits), ``clip`` = α (clipping
    threshold), ``max_summands`` = the number of parties whose ciphertexts may be added before decoding.
    """

    key_bits: int
    bits: int = 16
    clip: float = 1.0
    max_summands: int = 16
    headroom_bits: int = field(init=False)
    slot_bits: int = field(init=False)
    slots: int = field(init=False)
    levels: int = field(init=False)  # L = 2^b − 1, the largest quantized value
    step: float = field(init=False)  # Δ = 2c / L

    def __post_init__(self) -> None:
        for name in ("key_bits", "bits", "max_summands"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"Packer.{name} must be an int, got {getattr(self, name)!r}")
        if not 1 <= self.bits <= _MAX_BITS:
            raise ValueError(f"Packer.bits={self.bits} must lie in [1, {_MAX_BITS}]: more bits, less error")
        if not (isinstance(self.clip, (int, float)) and math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"Packer.clip={self.clip!r} must be a finite number > 0")
        if self.max_summands < 1:
            raise ValueError(f"Packer.max_summands={self.max_summands} must be >= 1")
        headroom = (self.max_summands - 1).bit_length()  # ⌈log2 k⌉ for k >= 1
        slot_bits = self.bits + headroom
        if slot_bits > _MAX_SLOT_BITS or slot_bits > self.key_bits - 2:
            raise ValueError(
                f"a slot of bits + ⌈log2 max_summands⌉ = {self.bits} + {headroom} = {slot_bits} bits does not fit "
                f"(limit {min(_MAX_SLOT_BITS, self.key_bits - 2)} for key_bits={self.key_bits}): lower bits "
                "(coarser values) or max_summands (fewer additions before decoding), or use a larger key"
            )
        levels = (1 << self.bits) - 1
        derived = dict(headroom_bits=headroom, slot_bits=slot_bits, slots=(self.key_bits - 2) // slot_bits)
        derived.update(levels=levels, step=2.0 * float(self.clip) / levels)
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    def num_plaintexts(self, length: int) -> int:
        """How many plaintexts a vector of ``length`` values packs into."""
        return -(-length // self.slots)

    def quantize(self, values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Clip to [−c, c] and stochastically round to q ∈ {0..L} (uint64); also count clipped values."""
        x = np.asarray(values, dtype=np.float64).reshape(-1)  # flattened in C order; never mutated
        if not np.all(np.isfinite(x)):
            raise ValueError("cannot quantize NaN or infinite values")
        clipped = int(np.count_nonzero(np.abs(x) > self.clip))
        u = (np.clip(x, -self.clip, self.clip) + self.clip) / self.step  # [len] in [0, L] up to rounding
        low = np.floor(u)
        q = low + (rng.random(u.shape) < (u - low))
        return np.clip(q, 0, self.levels).astype(np.uint64), clipped  # clip guards float rounding at ±c

    def pack(self, q: np.ndarray) -> list[int]:
        """Lay quantized values (or slot sums) into ``slots``-wide big integers, first value lowest."""
        q = np.asarray(q, dtype=np.uint64).reshape(-1)
        if q.size and int(q.max()) >> self.slot_bits:
            raise ValueError(f"a value does not fit in a {self.slot_bits}-bit slot")
        count, w = self.num_plaintexts(q.size), self.slot_bits
        padded = np.zeros(count * self.slots, dtype=np.uint64)
        padded[: q.size] = q
        shifts = np.arange(w, dtype=np.uint64)
        bits = ((padded.reshape(count, self.slots, 1) >> shifts) & np.uint64(1)).astype(np.uint8)  # [P, S, w]
        rows = np.packbits(bits.reshape(count, self.slots * w), axis=1, bitorder="little")  # [P, ⌈S·w/8⌉]
        return [int.from_bytes(row.tobytes(), "little") for row in rows]

    def unpack(self, plaintexts: list[int], length: int) -> np.ndarray:
        """Inverse of `pack` for ``length`` values: slot contents as uint64 (exact)."""
        count, w = self.num_plaintexts(length), self.slot_bits
        if len(plaintexts) != count:
            raise ValueError(f"{length} values need {count} plaintexts, got {len(plaintexts)}")
        nbytes, limit = -(-self.slots * w // 8), 1 << (self.slots * w)
        if any(not 0 <= int(m) < limit for m in plaintexts):
            raise ValueError("a plaintext exceeds the packed width: wrong key, wrong Packer or corrupted data")
        raw = np.frombuffer(b"".join(int(m).to_bytes(nbytes, "little") for m in plaintexts), dtype=np.uint8)
        bits = np.unpackbits(raw.reshape(count, nbytes), axis=1, bitorder="little")[:, : self.slots * w]
        weights = np.left_shift(np.uint64(1), np.arange(w, dtype=np.uint64))
        slots = (bits.reshape(count, self.slots, w).astype(np.uint64) @ weights).reshape(-1)  # [P·S]
        if np.any(slots[length:]):
            raise ValueError(f"padding slots after value {length} are not empty: wrong length or Packer")
        return slots[:length]

    def encode(self, values: np.ndarray, rng: np.random.Generator) -> tuple[list[int], int]:
        """Quantize and pack one client's update; returns (plaintexts, number of clipped values)."""
        q, clipped = self.quantize(values, rng)
        return self.pack(q), clipped

    def dequantize_sum(self, slot_sums: np.ndarray, num_summands: int) -> np.ndarray:
        """Σx̂ = (Σq)·Δ − k·c for slot sums of k = ``num_summands`` quantized vectors (float64)."""
        return np.asarray(slot_sums, dtype=np.float64) * self.step - num_summands * float(self.clip)

    def decode_sum(self, plaintexts: list[int], num_summands: int, length: int) -> np.ndarray:
        """Decode the (decrypted) sum of ``num_summands`` encoded vectors back to the sum of real values."""
        if not isinstance(num_summands, int) or not 1 <= num_summands <= self.max_summands:
            raise ValueError(
                f"num_summands={num_summands!r} must lie in [1, max_summands={self.max_summands}]: "
                "more additions than the headroom allows could have carried into the next slot"
            )
        sums = self.unpack(plaintexts, length)
        if sums.size and int(sums.max()) > num_summands * self.levels:
            raise ValueError(f"a slot exceeds {num_summands}·(2^bits − 1): num_summands or the data is wrong")
        return self.dequantize_sum(sums, num_summands)
