"""The client's half of the book's §15.4 encrypted logistic regression: fixed-point Paillier vectors and the
affine local step ``E(w) ← M_t·E(w) + q_t`` (see :mod:`fedloom.secure.encrypted_lr` for the model, the
protocol, the fixed-point budget and the runs).

A vector ``E(v)`` at binary exponent e encrypts the integers round(v·2^e) (negatives as n − |m|);
plaintext × ciphertext adds exponents, sums lift the smaller exponent first. Payloads are a header (magic,
exponent, count) and fixed-width big-endian ciphertexts, never pickle.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np

from . import paillier as P

__all__ = ["FixedPoint", "EncVec", "vec_to_bytes", "vec_from_bytes", "local_steps", "client_update"]

_HEAD = struct.Struct("<4sII")  # magic, exponent, number of ciphertexts
_MAGIC = b"ELR1"


@dataclass(frozen=True)
class FixedPoint:
    """Binary exponents (fractional bits) of the fixed-point encodings; 32 bits → rounding error ≤ 2^-33."""

    weight_bits: int = 32  # the global weights after each refresh
    coef_bits: int = 32  # each local step's matrix M
    lam_bits: int = 32  # the server's λ
    magnitude_bits: int = 24  # |weights| < 2^24, checked at every decryption

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 256:
                raise ValueError(f"FixedPoint.{name} must be an int in [1, 256], got {value!r}")

    def bits_needed(self, local_epochs: int, dim: int, k: int) -> int:
        """Plaintext bits a round can reach (see the module docstring); must stay below key_bits − 1."""
        e_max = self.weight_bits + local_epochs * self.coef_bits + self.lam_bits
        return e_max + self.magnitude_bits + math.ceil(math.log2(dim * k)) + 1


def _encode(x: float, exp: int) -> int:
    """round(x·2^exp), exact for every float64 (a Fraction keeps all mantissa bits)."""
    return round(Fraction(float(x)) * (1 << exp))


@dataclass
class EncVec:
    """Encrypted fixed-point vector: ciphertext j decrypts to round(v_j·2^exp) mod n."""

    cts: list
    exp: int


def vec_to_bytes(v: EncVec, pk: P.PublicKey) -> bytes:
    """Header (magic, exponent, count) + fixed-width big-endian ciphertexts; never pickle."""
    return _HEAD.pack(_MAGIC, v.exp, len(v.cts)) + P.ciphertexts_to_bytes(v.cts, pk)


def vec_from_bytes(data: bytes, pk: P.PublicKey) -> EncVec:
    if len(data) < _HEAD.size or data[:4] != _MAGIC:
        raise ValueError("not an encrypted-LR payload (wrong magic or too short)")
    _, exp, count = _HEAD.unpack_from(data)
    cts = P.ciphertexts_from_bytes(data[_HEAD.size :], pk)
    if len(cts) != count:
        raise ValueError(f"encrypted-LR payload announces {count} ciphertexts, holds {len(cts)}")
    return EncVec(cts, exp)


def _lift(pk: P.PublicKey, v: EncVec, exp: int) -> list:
    """The ciphertexts of v at the higher exponent ``exp`` (multiply by 2^(exp − v.exp))."""
    if exp == v.exp:
        return list(v.cts)
    return [P.mul_plain(pk, c, 1 << (exp - v.exp)) for c in v.cts]


def local_steps(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, local_epochs: int, batch_size: int, lr: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The plaintext half of local training: (M_t [d, d], q_t [d]) with w_t = M_t·w_(t−1) + q_t.

    ``x`` [n, d] already has the bias column. An epoch is a full pass, as everywhere in fedloom: a fresh
    permutation cut into batches of ``batch_size`` rows (the book's ch.15 client takes one batch per "epoch").
    """
    n, d = x.shape
    steps = []
    batches = [
        perm[s : s + batch_size]
        for _ in range(local_epochs)
        for perm in [rng.permutation(n)]
        for s in range(0, n, batch_size)
    ]
    for idx in batches:
        xb, yb = x[idx], y[idx]  # [B, d], [B]
        a, b = xb.T @ xb / len(idx), xb.T @ yb / len(idx)  # [d, d], [d]
        steps.append((np.eye(d) - (lr / 4) * a, (lr / 2) * b))
    return steps


def _affine(pk: P.PublicKey, w: EncVec, m: np.ndarray, q: np.ndarray, coef_bits: int) -> EncVec:
    """E(M·w + q) at exponent w.exp + coef_bits: Π_j E(w_j)^(M̃_ij) · E(q̃_i), M̃ = round(M·2^coef_bits)."""
    exp = w.exp + coef_bits
    inv = [P.mul_plain(pk, c, -1) for c in w.cts]  # E(−w_j): negative coefficients use these
    out = []
    for row, q_i in zip(m, q):
        acc = 1  # the product's identity; uploads are re-randomized, so even an all-zero row leaks nothing
        for c, c_inv, coef in zip(w.cts, inv, row):
            k = _encode(coef, coef_bits)
            if k:
                acc = P.add(pk, acc, P.mul_plain(pk, c if k > 0 else c_inv, abs(k)))
        out.append(P.add_plain(pk, acc, _encode(q_i, exp)))
    return EncVec(out, exp)


def client_update(
    pk: P.PublicKey, down: bytes, steps: Sequence[tuple[np.ndarray, np.ndarray]], coef_bits: int
) -> tuple[bytes, float]:
    """A client's round with the public key only: E(w_T − G), re-randomized; returns (payload, encrypt s)."""
    g = vec_from_bytes(down, pk)
    w = g
    for m, q in steps:
        w = _affine(pk, w, m, q, coef_bits)
    back = [P.mul_plain(pk, c, -(1 << (w.exp - g.exp))) for c in g.cts]  # E(−G) at w's exponent
    t0 = time.perf_counter()
    zeros = P.encrypt_many(pk, [0] * len(w.cts))  # fresh randomness: the upload reveals nothing about M_t
    seconds = time.perf_counter() - t0
    diff = [P.add(pk, P.add(pk, a, b), z) for a, b, z in zip(w.cts, back, zeros)]
    return vec_to_bytes(EncVec(diff, w.exp), pk), seconds
