"""Paillier encryption with g = n + 1, a short-exponent randomizer and CRT decryption, on gmpy2.

Scheme (Paillier, EUROCRYPT 1999, Scheme 1): n = p·q, ciphertext space Z*_{n²},

    E(m; R) = g^m · R mod n²,   with g = n + 1 so g^m = 1 + m·n mod n²   (binomial theorem)

and the additive homomorphism E(a)·E(b) = E(a + b), E(a)^k = E(k·a) (all mod n).

Randomizer R (Damgård–Jurik–Nielsen, "A generalization of Paillier's public-key system with applications
to electronic voting", Int. J. Inf. Secur. 9, 2010, fixed-h variant with s = 1): keygen draws x ∈ Z*_n,
h = −x² mod n and publishes hs = h^n mod n²; encryption uses R = hs^r with r of ``r_bits`` bits instead
of the classic R = x^n (a 2048-bit exponent; still available as ``fast=False``). Default r_bits = key_bits/2,
the ⌈k/2⌉ DJN prescribe: the best known attack on a short exponent (Pollard's lambda) costs 2^(r_bits/2),
a wide margin over the ~112-bit strength of a 2048-bit n (NIST SP 800-57 Pt 1, Table 2; 224 bits would be
the bare minimum, enforced in paillier_keys.py). With the table below 1024 bits cost only ~2× what 512 bits would.

Fixed-base table (Handbook of Applied Cryptography §14.6.3): rows[i][d] = hs^(d·2^(8i)), so hs^r is one
modular multiplication per non-zero byte of r and no squaring. Measured for 2048-bit n, 1024-bit r on the
2-core dev machine: ~1 550 randomizers/s vs ~210/s by powmod; ~0.2 s and ~19 MB once per key. A holder of
the secret key computes R modulo p² and q² and joins them by the CRT (~2 000/s, two half-size tables, ~22 MB).

Decryption by CRT (Paillier 1999 §7): m_p = L_p(c^(p−1) mod p²)·h_p mod p with L_p(u) = (u − 1)/p and
h_p = L_p(g^(p−1) mod p²)^(−1) mod p, likewise for q, then m = CRT(m_p, m_q).

Keys (generation, strength checks, JSON key files) live in :mod:`fedloom.secure.paillier_keys` and are
re-exported here. Plaintexts are residues 0 ≤ m < n; `encode_signed`/`decode_signed` map a negative m to n − |m|.
Python big-integer arithmetic is not constant-time: this module guards against a passive network observer,
not against side channels on the machine that holds the key.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import gmpy2
from gmpy2 import mpz

from .paillier_keys import (  # the keys live in paillier_keys.py; re-exported so callers keep one namespace
    MIN_KEY_BITS,
    PUBLIC_FILE,
    SECRET_FILE,
    PublicKey,
    SecretKey,
    generate_keypair,
    load_public_key,
    load_secret_key,
    public_key_from_dict,
    public_key_to_dict,
    save_keypair,
    secret_key_from_dict,
    secret_key_to_dict,
)

__all__ = ["MIN_KEY_BITS", "PUBLIC_FILE", "SECRET_FILE", "PublicKey", "SecretKey", "generate_keypair"]
__all__ += ["RandomizerTable", "encrypt", "decrypt", "encrypt_many", "decrypt_many"]
__all__ += ["add", "add_plain", "mul_plain", "sum_ciphertexts", "encode_signed", "decode_signed"]
__all__ += ["ciphertexts_to_bytes", "ciphertexts_from_bytes", "public_key_to_dict", "public_key_from_dict"]
__all__ += ["secret_key_to_dict", "secret_key_from_dict", "save_keypair", "load_public_key", "load_secret_key"]

_WINDOW = 8  # table digits are the bytes of the exponent: no bit fiddling in the hot loop


class _FixedBase:
    """base^e mod modulus for 0 <= e < 2^exp_bits: rows[i][d] = base^(d·2^(8i)) (HAC §14.6.3)."""

    def __init__(self, base: mpz, modulus: mpz, exp_bits: int) -> None:
        self.modulus, self.rows = modulus, []
        row_base = mpz(base) % modulus
        for _ in range(-(-exp_bits // _WINDOW)):
            row, acc = [mpz(1)], mpz(1)
            for _ in range(1, 1 << _WINDOW):
                acc = acc * row_base % modulus
                row.append(acc)
            self.rows.append(row)
            row_base = acc * row_base % modulus  # base^(2^(8(i+1)))

    def pow(self, exponent_bytes: bytes) -> mpz:
        """base^e for e given as little-endian bytes, one byte per row."""
        acc, mod = mpz(1), self.modulus
        for row, digit in zip(self.rows, exponent_bytes):
            if digit:
                acc = acc * row[digit] % mod
        return acc


class RandomizerTable:
    """Precomputed hs^r for one key: one table mod n² (public key) or two mod p², q² (secret key).

    Build once per key and pass it to `encrypt`/`encrypt_many`; ~0.2 s and ~19 MB for 2048-bit n.
    """

    def __init__(self, key: PublicKey | SecretKey) -> None:
        self.is_secret = isinstance(key, SecretKey)
        pk = key.public_key if isinstance(key, SecretKey) else key
        self.n, self.r_bytes = pk.n, -(-pk.r_bits // 8)
        if isinstance(key, SecretKey):
            self.tables = (_FixedBase(pk.hs, key.p2, pk.r_bits), _FixedBase(pk.hs, key.q2, pk.r_bits))
        else:
            self.tables = (_FixedBase(pk.hs, pk.n2, pk.r_bits),)


def _public(key: PublicKey | SecretKey) -> PublicKey:
    return key.public_key if isinstance(key, SecretKey) else key


def _randomizer(key: PublicKey | SecretKey, fast: bool, table: RandomizerTable | None) -> mpz:
    """R = hs^r (fast, r of r_bits bits) or R = x^n (classic, x ∈ Z*_n), by CRT when key is secret."""
    pk = _public(key)
    if table is not None:
        if table.n != pk.n or table.is_secret != isinstance(key, SecretKey):
            raise ValueError("randomizer table was built for a different key (or key kind)")
        r = secrets.token_bytes(table.r_bytes)  # r_bits rounded up to whole bytes, still uniform
        parts = [t.pow(r) for t in table.tables]
        return parts[0] if len(parts) == 1 else key._crt(*parts)  # type: ignore[union-attr]
    if fast:
        base, exponent = pk.hs, mpz(secrets.randbits(pk.r_bits))
    else:
        base, exponent = mpz(secrets.randbelow(int(pk.n) - 1) + 1), pk.n
        while gmpy2.gcd(base, pk.n) != 1:  # x must be a unit; only tiny toy keys ever loop here
            base = mpz(secrets.randbelow(int(pk.n) - 1) + 1)
    if isinstance(key, SecretKey):
        return key._crt(gmpy2.powmod(base, exponent, key.p2), gmpy2.powmod(base, exponent, key.q2))
    return gmpy2.powmod(base, exponent, pk.n2)


def _check_plaintext(pk: PublicKey, m: int) -> mpz:
    m = mpz(m)
    if not 0 <= m < pk.n:
        raise ValueError(f"plaintext must satisfy 0 <= m < n (use encode_signed for negatives), got {m}")
    return m


def encrypt(key: PublicKey | SecretKey, m: int, *, fast: bool = True, table: RandomizerTable | None = None) -> mpz:
    """E(m) = (1 + m·n)·R mod n²; with a SecretKey the randomizer is computed by CRT (faster)."""
    pk = _public(key)
    return (_check_plaintext(pk, m) * pk.n + 1) * _randomizer(key, fast, table) % pk.n2


def decrypt(sk: SecretKey, c: int) -> int:
    """m = CRT(L_p(c^(p−1) mod p²)·h_p mod p, L_q(c^(q−1) mod q²)·h_q mod q) (Paillier 1999 §7)."""
    c = mpz(c)
    if not 0 < c < sk.public_key.n2:
        raise ValueError("ciphertext out of range: must satisfy 0 < c < n²")
    p, q = sk.p, sk.q
    m_p = (gmpy2.powmod(c % sk.p2, p - 1, sk.p2) - 1) // p * sk.hp % p
    m_q = (gmpy2.powmod(c % sk.q2, q - 1, sk.q2) - 1) // q * sk.hq % q
    return int(m_q + ((m_p - m_q) * sk.q_inv_p % p) * q)


def encrypt_many(
    key: PublicKey | SecretKey, ms: Iterable[int], *, fast: bool = True, table: RandomizerTable | None = None
) -> list[mpz]:
    """Encrypt each plaintext; pass a `RandomizerTable` when encrypting more than ~100 values per key."""
    return [encrypt(key, m, fast=fast, table=table) for m in ms]


_WORKER_KEY: SecretKey | None = None  # set in each decryption worker process by _init_worker
_PARALLEL_MIN = 64  # below this many ciphertexts, starting the pool (~50 ms) outweighs the gain


def _init_worker(secret_dict: dict[str, Any]) -> None:
    global _WORKER_KEY
    _WORKER_KEY = secret_key_from_dict(secret_dict, allow_weak_keys=True)


def _decrypt_chunk(payload: bytes) -> list[int]:
    sk = _WORKER_KEY
    assert sk is not None, "worker not initialised"  # internal invariant, not user input
    return [decrypt(sk, c) for c in ciphertexts_from_bytes(payload, sk.public_key)]


def decrypt_many(sk: SecretKey, cs: Iterable[int], *, workers: int = 1) -> list[int]:
    """Decrypt each ciphertext; ``workers > 1`` spreads batches of >= 64 over processes.

    Measured: 600 ciphertexts (2048-bit n) take 1.6 s in one process, 0.8 s with 2 workers on the 2-core
    machine when its second core is idle (no gain while other work holds it). Workers receive the key as a
    dict and the ciphertexts as fixed-width bytes; under the spawn or forkserver start methods the calling
    script needs the usual ``if __name__ == "__main__":`` guard. Encryption has no such option: each worker
    would first rebuild its ~0.2 s table, which a round's ~1 000 ciphertexts (~0.6 s) barely repay.
    """
    cs = list(cs)
    if workers <= 1 or len(cs) < _PARALLEL_MIN:
        return [decrypt(sk, c) for c in cs]
    step = -(-len(cs) // (4 * workers))  # 4 chunks per worker evens out uneven progress
    chunks = [ciphertexts_to_bytes(cs[i : i + step], sk.public_key) for i in range(0, len(cs), step)]
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(secret_key_to_dict(sk),)) as ex:
        return [m for part in ex.map(_decrypt_chunk, chunks) for m in part]


def add(pk: PublicKey, c1: int, c2: int) -> mpz:
    """E(a)·E(b) = E(a + b mod n)."""
    return mpz(c1) * mpz(c2) % pk.n2


def add_plain(pk: PublicKey, c: int, m: int) -> mpz:
    """E(a)·(1 + m·n) = E(a + m mod n); m may be negative (taken mod n)."""
    return mpz(c) * (mpz(m) % pk.n * pk.n + 1) % pk.n2


def mul_plain(pk: PublicKey, c: int, k: int) -> mpz:
    """E(a)^k = E(k·a mod n); a negative k inverts c first (cheaper than the exponent n − |k|)."""
    c, k = mpz(c), mpz(k)
    if k < 0:
        c, k = gmpy2.invert(c, pk.n2), -k
    return gmpy2.powmod(c, k, pk.n2)


def sum_ciphertexts(pk: PublicKey, ciphertext_lists: Sequence[Sequence[int]]) -> list[mpz]:
    """Column-wise homomorphic sum of equally long lists (one list per client)."""
    if not ciphertext_lists:
        raise ValueError("sum_ciphertexts needs at least one list of ciphertexts")
    if len({len(cs) for cs in ciphertext_lists}) != 1:
        raise ValueError("all ciphertext lists must have the same length to be added column-wise")
    n2, acc = pk.n2, [mpz(c) for c in ciphertext_lists[0]]
    for cs in ciphertext_lists[1:]:  # gmpy2 xmpz in-place *= / %= measured only ~5% faster: not worth it
        acc = [a * c % n2 for a, c in zip(acc, cs)]
    return acc


def encode_signed(m: int, pk: PublicKey) -> int:
    """Map a signed integer with |m| <= (n−1)/2 to the residue m mod n (negatives become n − |m|)."""
    if abs(m) > (pk.n - 1) // 2:
        raise ValueError("signed plaintext out of range: need |m| <= (n-1)/2")
    return int(m % pk.n)


def decode_signed(x: int, pk: PublicKey) -> int:
    """Inverse of `encode_signed`: residues above (n−1)/2 are negative."""
    x = int(x)
    return x - int(pk.n) if x > (pk.n - 1) // 2 else x


def ciphertexts_to_bytes(cs: Iterable[int], pk: PublicKey) -> bytes:
    """Concatenate ciphertexts as fixed-width big-endian integers of ceil(2·key_bits/8) bytes each."""
    width, n2 = (2 * pk.key_bits + 7) // 8, pk.n2
    out = []
    for c in cs:
        if not 0 < c < n2:
            raise ValueError("ciphertext out of range: must satisfy 0 < c < n²")
        out.append(int(c).to_bytes(width, "big"))
    return b"".join(out)


def ciphertexts_from_bytes(data: bytes, pk: PublicKey) -> list[mpz]:
    """Inverse of `ciphertexts_to_bytes`; rejects a ragged length or an out-of-range value."""
    width, n2 = (2 * pk.key_bits + 7) // 8, pk.n2
    if len(data) % width:
        raise ValueError(f"ciphertext payload of {len(data)} bytes is not a multiple of {width}")
    cs = [mpz(int.from_bytes(data[i : i + width], "big")) for i in range(0, len(data), width)]
    if any(not 0 < c < n2 for c in cs):
        raise ValueError("ciphertext payload holds a value outside 0 < c < n² (wrong key or corrupted)")
    return cs
