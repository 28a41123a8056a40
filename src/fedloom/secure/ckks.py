"""CKKS secure aggregation with TenSEAL: the server adds encrypted float vectors it cannot read.

CKKS (Cheon, Kim, Kim, Song, "Homomorphic Encryption for Arithmetic of Approximate Numbers", ASIACRYPT 2017)
encrypts N/2 real numbers per ciphertext ("slots"); adding two ciphertexts adds them slot by slot, with an
absolute error near 2^-27 at the default scale (measured below). TenSEAL (OpenMined, Apache-2.0) wraps
Microsoft SEAL; it is an optional dependency (``pip install tenseal``), imported only when a CKKS object is
built, so importing this module costs nothing.

Parameters (defaults, and why):

- ``poly_modulus_degree`` N = 8192: 4096 slots per ciphertext. The HE security standard
  (homomorphicencryption.org, 2018, Table 1) allows a coefficient modulus of at most 218 bits at N = 8192 for
  128-bit security (109 bits at N = 4096, too little for the margins below).
- ``coeff_mod_bit_sizes`` = (60, 40, 60), 160 bits: the last prime is SEAL's special (key-switching) prime;
  a fresh ciphertext lives modulo the others, q = 2^100. Aggregation only *adds* ciphertexts, so no
  rescaling levels are needed (the common (60, 40, 40, 60) buys one multiplication we never do and costs
  ~40 % more bytes). A sum decodes correctly while scale·|Σ values| < q/2: 2^59 headroom at scale 2^40,
  checked on the client for ``max_summands`` clients. (60, 60) would give 32 bytes per value instead of ~57,
  but only 2^19 headroom: FedAvg's ``n_i·diff_i`` from a few thousand rows could overflow a k-fold sum
  silently (the encoder only rejects a single too-large vector).
- global scale 2^40: fresh-encryption error measured at ~1e-8 absolute for N = 8192 (2^30 gives ~1e-5).
- No Galois keys (we never rotate slots) and no relinearization keys (we never multiply ciphertexts): the
  public context carries only the public key, ~0.36 MB.

Payload (never pickle): ``b"CKS1"``, uint32 chunk count C, C × uint32 byte lengths, then each chunk's
``CKKSVector.serialize()`` bytes. The client's values and, in the slot right after them, its integer weight
form one flat vector ``[length + 1]`` cut into ⌈(length + 1)/slots⌉ chunks, so the weight usually rides in
spare slots of the last chunk; it comes back as a float and is rounded (error ~1e-8 ≪ 0.5).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import ClientCipher, Decrypted, KeyHolder, ServerCipher

__all__ = ["CKKSKeyHolder", "CKKSClientCipher", "ckks_server_cipher", "split_payload", "join_payload"]

_MAGIC = b"CKS1"
_HEAD = struct.Struct("<4sI")  # magic, chunk count
_LEN = struct.Struct("<I")  # one chunk's byte length
_MAX_N = 32768  # SEAL's largest supported poly_modulus_degree


def _tenseal() -> Any:
    try:
        import tenseal
    except ImportError as err:  # an optional dependency: say how to get it
        raise ImportError("method 'ckks' needs TenSEAL: pip install tenseal") from err
    return tenseal


def join_payload(chunks: Sequence[bytes]) -> bytes:
    """Header (magic, chunk count, each chunk's length) followed by the chunks."""
    head = _HEAD.pack(_MAGIC, len(chunks)) + b"".join(_LEN.pack(len(c)) for c in chunks)
    return head + b"".join(chunks)


def split_payload(payload: bytes) -> list[memoryview]:
    """Inverse of `join_payload` (zero-copy views); rejects a wrong magic or inconsistent lengths."""
    view = memoryview(payload)
    if len(view) < _HEAD.size:
        raise ValueError(f"CKKS payload of {len(view)} bytes is shorter than its {_HEAD.size}-byte header")
    magic, count = _HEAD.unpack_from(view)
    start = _HEAD.size + count * _LEN.size
    if magic != _MAGIC or count == 0 or start > len(view):
        raise ValueError("not a CKKS payload (wrong magic, no chunks, or truncated header)")
    lengths = [_LEN.unpack_from(view, _HEAD.size + i * _LEN.size)[0] for i in range(count)]
    if start + sum(lengths) != len(view):
        raise ValueError(f"CKKS payload: chunk lengths sum to {sum(lengths)}, body holds {len(view) - start}")
    out = []
    for n in lengths:
        out.append(view[start : start + n])
        start += n
    return out


def _headroom_bits(data_modulus_bits: int, scale_bits: float, max_summands: int) -> float:
    """log2 of the largest |value| whose ``max_summands``-fold sum, times the scale, stays below q/2."""
    return data_modulus_bits - scale_bits - 1 - math.ceil(math.log2(max_summands))


def _public_context(ts: Any, public_bytes: bytes, who: str) -> tuple[Any, int, int]:
    """The context, its slot count N/2 and the bit count of a fresh ciphertext's modulus q."""
    context = ts.context_from(public_bytes)
    if context.is_private():
        raise ValueError(f"the {who}'s CKKS context must not hold a secret key (build it from public_bytes())")
    first = context.seal_context().data.first_context_data()  # fresh ciphertexts: all primes but the special one
    return context, first.parms().poly_modulus_degree() // 2, first.total_coeff_modulus_bit_count()


class CKKSClientCipher(ClientCipher):
    """Encrypts with a public TenSEAL context; refuses a context that carries the secret key.

    Values must satisfy |value| <= ``max_abs`` = 2^(log2 q − scale_bits − 1 − ⌈log2 max_summands⌉), so that
    a sum of ``max_summands`` payloads cannot wrap modulo q (a wrapped sum would decrypt to garbage silently).
    """

    def __init__(self, public_bytes: bytes, *, max_summands: int = 16) -> None:
        ts = _tenseal()
        self.context, self.slots, q_bits = _public_context(ts, public_bytes, "client")
        self.max_abs = 2.0 ** _headroom_bits(q_bits, math.log2(self.context.global_scale), max_summands)
        self._ts = ts

    def encrypt(self, values: np.ndarray, weight: int, rng: np.random.Generator | None = None) -> bytes:
        """Payload of ⌈(length + 1)/slots⌉ ciphertexts; ``rng`` is unused (SEAL draws from the OS RNG)."""
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.isfinite(flat).all():
            raise ValueError("CKKS: values must be finite")
        peak = float(np.abs(flat).max(initial=0.0))
        if peak > self.max_abs or abs(weight) > self.max_abs:
            raise ValueError(
                f"CKKS: |value| up to {max(peak, abs(weight)):.3g} exceeds {self.max_abs:.3g}, the bound that keeps a "
                "sum of max_summands payloads below q/(2·scale); lower scale_bits or add a coefficient prime"
            )
        flat = np.append(flat, float(weight))  # [length + 1]: the weight takes the slot after the values
        ckks_vector, step = self._ts.ckks_vector, self.slots
        return join_payload(
            [ckks_vector(self.context, flat[i : i + step]).serialize() for i in range(0, len(flat), step)]
        )


class _CKKSServerCipher(ServerCipher):
    def __init__(self, public_bytes: bytes) -> None:
        ts = _tenseal()
        self.context = _public_context(ts, public_bytes, "server")[0]
        self._from = ts.ckks_vector_from

    def add(self, payloads: Sequence[bytes]) -> bytes:
        """Chunk-wise sum, accumulated in place (``+=`` on SEAL ciphertexts; ``a + b`` would copy)."""
        if not payloads:
            raise ValueError("CKKS add needs at least one payload")
        parts = [split_payload(p) for p in payloads]
        if len({len(p) for p in parts}) != 1:
            raise ValueError("CKKS payloads hold different chunk counts: they encrypt vectors of different lengths")
        acc = [self._from(self.context, bytes(c)) for c in parts[0]]
        for other in parts[1:]:
            for a, c in zip(acc, other):
                a += self._from(self.context, bytes(c))  # in place: CKKSVector.__iadd__ → add_
        return join_payload([a.serialize() for a in acc])


def ckks_server_cipher(public_bytes: bytes) -> ServerCipher:
    """The server's side: a public context only (raises if the bytes carry a secret key)."""
    return _CKKSServerCipher(public_bytes)


class CKKSKeyHolder(KeyHolder):
    """Creates the CKKS context (secret key included) and decrypts aggregates; see the module docstring."""

    name = "ckks"

    def __init__(
        self,
        poly_modulus_degree: int = 8192,
        coeff_mod_bit_sizes: Sequence[int] = (60, 40, 60),
        scale_bits: int = 40,
        max_summands: int = 16,
    ) -> None:
        n = poly_modulus_degree
        if not isinstance(n, int) or n < 1024 or n > _MAX_N or n & (n - 1):
            raise ValueError(f"poly_modulus_degree must be a power of two in [1024, {_MAX_N}], got {n!r}")
        sizes = [int(b) for b in coeff_mod_bit_sizes]
        if len(sizes) < 2 or any(not 1 <= b <= 60 for b in sizes):
            raise ValueError(f"coeff_mod_bit_sizes needs >= 2 primes of 1..60 bits (SEAL's limit), got {sizes}")
        if not isinstance(max_summands, int) or max_summands < 1:
            raise ValueError(f"max_summands must be a positive int, got {max_summands!r}")
        q_bits = sum(sizes[:-1])  # the last prime is SEAL's special prime, not part of a fresh ciphertext
        if not isinstance(scale_bits, int) or scale_bits < 20 or _headroom_bits(q_bits, scale_bits, max_summands) < 1:
            raise ValueError(
                f"scale_bits={scale_bits!r} must be an int >= 20 (error ~2^-(scale_bits-13)) and leave headroom in "
                f"the {q_bits}-bit data modulus for a sum of {max_summands} payloads: add a prime or lower the scale"
            )
        ts = _tenseal()
        try:  # SEAL rejects a modulus too large for 128-bit security at this N (or primes it cannot find)
            self.context = ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=sizes)
        except ValueError as err:
            raise ValueError(
                f"SEAL rejects N={n} with coeff_mod_bit_sizes={sizes} ({err}); 128-bit security allows a total "
                "of 27/54/109/218/438/881 bits for N = 1024..32768"
            ) from None
        self.context.global_scale = 2.0**scale_bits
        self.slots, self.scale_bits, self.max_summands = n // 2, scale_bits, max_summands
        self._public = self.context.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
        self._from = ts.ckks_vector_from

    def public_bytes(self) -> bytes:
        """The context without secret, Galois or relinearization keys (~0.36 MB at N = 8192)."""
        return self._public

    def client_cipher(self) -> CKKSClientCipher:
        return CKKSClientCipher(self._public, max_summands=self.max_summands)

    def decrypt(self, payload: bytes, num_summands: int, length: int) -> Decrypted:
        """Decrypt a sum of ``num_summands`` payloads of ``length`` values (plus the weight slot)."""
        if not 1 <= num_summands <= self.max_summands:
            raise ValueError(f"num_summands={num_summands} outside [1, max_summands={self.max_summands}]")
        chunks = split_payload(payload)
        if len(chunks) != -(-(length + 1) // self.slots):
            raise ValueError(
                f"CKKS payload has {len(chunks)} chunks; {length} values need {-(-(length + 1) // self.slots)}"
            )
        flat = np.concatenate([np.asarray(self._from(self.context, bytes(c)).decrypt()) for c in chunks])
        if len(flat) != length + 1:
            raise ValueError(f"CKKS payload decrypts to {len(flat)} slots, expected {length} values + 1 weight")
        return Decrypted(values=flat[:length].astype(np.float64), weight=int(round(float(flat[length]))))
