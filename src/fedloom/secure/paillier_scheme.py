"""Paillier in the secure-aggregation roles: packed (BatchCrypt) and per-value.

Packed (Zhang et al., USENIX ATC 2020): a client clips and quantizes ``w_i·diff_i`` to ``bits``-bit slots
(:class:`~fedloom.secure.packing.Packer`), packs ~``key_bits/(bits+headroom)`` values per plaintext and
encrypts each plaintext; its weight ``n_i`` travels as one more ciphertext holding the exact integer. The
server multiplies ciphertexts (adds plaintexts); the key holder decrypts the aggregate and unpacks the slot
sums. Per-value: every value is its own ciphertext, fixed-point with ``2^frac_bits`` scale — the textbook
(phe-style) way, kept to measure what packing buys.

Public bytes are JSON (the public key as hex, the packing parameters); ciphertexts travel as fixed-width
big-endian integers (``ciphertexts_to_bytes``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from .base import ClientCipher, Decrypted, KeyHolder, ServerCipher
from .packing import Packer
from .paillier import (
    PublicKey,
    RandomizerTable,
    SecretKey,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    decode_signed,
    decrypt_many,
    encode_signed,
    encrypt_many,
    generate_keypair,
    public_key_from_dict,
    public_key_to_dict,
    sum_ciphertexts,
)

__all__ = [
    "PaillierKeyHolder",
    "PaillierClientCipher",
    "PaillierServerCipher",
    "paillier_server_cipher",
    "paillier_public_bytes",
]

_FRAC_BITS = 32  # per-value fixed point: 2^-32 ≈ 2.3e-10 resolution, far below float32 update noise
_MAX_PER_VALUE = 2.0**30  # |x|·2^32 < 2^62 fits int64, and sums of many clients stay far below n/2
_MAX_WEIGHT = 2**53  # a decrypted total weight (sample counts) beyond this is not a sum of honest counts


def _params(public: bytes) -> tuple[PublicKey, dict]:
    d = json.loads(public)
    return public_key_from_dict(d["key"], allow_weak_keys=True), d  # strength was checked at keygen


class PaillierClientCipher(ClientCipher):
    """Public key, packer and a randomizer table (built once per key: ~0.2 s at 2048 bits)."""

    def __init__(self, public: bytes):
        self.pk, d = _params(public)
        self.packed = d["packed"]
        self.packer = Packer(self.pk.n.bit_length(), d["bits"], d["clip"], d["max_summands"]) if self.packed else None
        self.table = RandomizerTable(self.pk)
        self.clipped = 0  # values clipped to ±clip by this cipher so far (BatchCrypt's clipping loss)

    def encrypt(self, values: np.ndarray, weight: int, rng: np.random.Generator) -> bytes:
        if self.packer is not None:
            plaintexts, clipped = self.packer.encode(values, rng)
            self.clipped += clipped
        else:
            x = np.asarray(values, dtype=np.float64)
            if not np.all(np.isfinite(x)):
                raise ValueError("per-value Paillier cannot encrypt NaN or infinite values")
            if x.size and float(np.abs(x).max()) >= _MAX_PER_VALUE:
                raise ValueError(f"per-value Paillier encrypts values below {_MAX_PER_VALUE:g} in magnitude")
            fixed = np.round(x * 2.0**_FRAC_BITS).astype(np.int64)
            plaintexts = [encode_signed(int(v), self.pk) for v in fixed]
        cts = encrypt_many(self.pk, [*plaintexts, int(weight)], table=self.table)
        return ciphertexts_to_bytes(cts, self.pk)


class PaillierServerCipher(ServerCipher):
    """Only the public key: adds ciphertexts slot by slot (multiplication mod n²)."""

    def __init__(self, public: bytes):
        self.pk, _ = _params(public)

    def add(self, payloads: Sequence[bytes]) -> bytes:
        lists = [ciphertexts_from_bytes(p, self.pk) for p in payloads]
        if len({len(c) for c in lists}) != 1:
            raise ValueError("encrypted updates differ in length: clients used different layouts")
        return ciphertexts_to_bytes(sum_ciphertexts(self.pk, lists), self.pk)


def paillier_server_cipher(public: bytes) -> PaillierServerCipher:
    return PaillierServerCipher(public)


def paillier_public_bytes(pk: PublicKey, packed: bool, bits: int, clip: float, max_summands: int) -> bytes:
    """The public bytes of a key holder with public key ``pk``, built without its secret key."""
    return json.dumps(
        {"key": public_key_to_dict(pk), "packed": packed, "bits": bits, "clip": clip, "max_summands": max_summands}
    ).encode()


class PaillierKeyHolder(KeyHolder):
    """Generates the key pair from the OS RNG and decrypts aggregates (by CRT, both cores when long)."""

    def __init__(
        self,
        key_bits: int = 2048,
        packed: bool = True,
        bits: int = 16,
        clip: float = 0.5,
        max_summands: int = 16,
        allow_weak_keys: bool = False,
        workers: int = 1,
        keys: tuple[PublicKey, SecretKey] | None = None,
    ):
        """A fresh key pair from the OS RNG, or ``keys`` (e.g. loaded from ``fedloom keygen``'s files)."""
        self.pk, self._sk = keys if keys is not None else generate_keypair(key_bits, allow_weak_keys=allow_weak_keys)
        self.name = "paillier" + ("" if packed else "-per-value")
        self.key_bits, self.workers = key_bits, workers
        self.packer = Packer(self.pk.n.bit_length(), bits, clip, max_summands) if packed else None
        self._public = paillier_public_bytes(self.pk, packed, bits, clip, max_summands)

    def public_bytes(self) -> bytes:
        return self._public

    def client_cipher(self) -> PaillierClientCipher:
        return PaillierClientCipher(self._public)

    def decrypt(self, payload: bytes, num_summands: int, length: int) -> Decrypted:
        plain = decrypt_many(self._sk, ciphertexts_from_bytes(payload, self.pk), workers=self.workers)
        *values, weight = plain
        weight = decode_signed(weight, self.pk)  # a "negative" weight is a residue near n: decode it as such
        if not 0 <= weight <= _MAX_WEIGHT:
            raise ValueError(f"the decrypted total weight {weight} is outside 0..2^53: not a sum of sample counts")
        if self.packer is not None:
            if num_summands > self.packer.max_summands:
                raise ValueError(
                    f"{num_summands} updates summed, the packing has headroom for {self.packer.max_summands}"
                )
            out = self.packer.decode_sum(values, num_summands, length)
        else:
            out = np.array([decode_signed(v, self.pk) for v in values], dtype=np.float64) / 2.0**_FRAC_BITS
        return Decrypted(out, int(weight))
