"""Paillier keys: generation, strength checks, and key files (the keys of :mod:`fedloom.secure.paillier`).

n = p·q with p, q random primes from the OS RNG whose top two bits are set (so n has exactly ``key_bits``
bits) and gcd(n, (p−1)(q−1)) = 1; g = n + 1 is implicit. The DJN randomizer base (Damgård–Jurik–Nielsen,
Int. J. Inf. Secur. 9, 2010, fixed-h variant with s = 1): x a random unit, h = −x² mod n, hs = h^n mod n²,
published with ``r_bits``, the length of the randomizer exponents (see paillier.py for the strength argument).
Keys below 2048 bits (NIST SP 800-57 Pt 1, ~112-bit security) or ``r_bits`` below 224 need
``allow_weak_keys``; nothing goes below 256 / 64 bits.

Key files are JSON with integers as hex strings: ``paillier_public.json`` (n, hs, r_bits; mode 0644) and
``paillier_secret.json`` (the public key plus p and q; created 0600 before any byte is written).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gmpy2
from gmpy2 import mpz

__all__ = ["MIN_KEY_BITS", "PUBLIC_FILE", "SECRET_FILE", "PublicKey", "SecretKey", "generate_keypair"]
__all__ += ["public_key_to_dict", "public_key_from_dict", "secret_key_to_dict", "secret_key_from_dict"]
__all__ += ["save_keypair", "load_public_key", "load_secret_key"]

MIN_KEY_BITS = 2048  # NIST SP 800-57 Part 1: 2048-bit factoring moduli for ~112-bit security
_WEAK_FLOOR_BITS = 256  # below this even tests make no sense (packing needs room for slots)
_SCHEME = "paillier-djn-g=n+1"
PUBLIC_FILE, SECRET_FILE = "paillier_public.json", "paillier_secret.json"


def _check_strength(key_bits: int, r_bits: int, allow_weak_keys: bool) -> None:
    if key_bits < _WEAK_FLOOR_BITS:
        raise ValueError(f"key_bits={key_bits} is unusable; the floor (even with weak keys) is {_WEAK_FLOOR_BITS}")
    if not allow_weak_keys and key_bits < MIN_KEY_BITS:
        raise ValueError(
            f"key_bits={key_bits} is below {MIN_KEY_BITS}, the minimum for ~112-bit security; pass "
            "allow_weak_keys=True only for tests or to reproduce the book's 1024-bit examples"
        )
    if not 64 <= r_bits <= key_bits or (not allow_weak_keys and r_bits < 224):
        raise ValueError(
            f"r_bits={r_bits} must lie in [224, key_bits={key_bits}] (short-exponent attacks cost "
            "2^(r_bits/2)); below 224 only with allow_weak_keys=True, and never below 64"
        )


@dataclass(frozen=True)
class PublicKey:
    """n, the DJN randomizer base ``hs = h^n mod n²`` and the randomizer exponent length ``r_bits``."""

    n: mpz
    hs: mpz
    r_bits: int
    n2: mpz = field(init=False, repr=False, compare=False)
    key_bits: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        n, hs = mpz(self.n), mpz(self.hs)
        if n < 3 or n % 2 == 0:
            raise ValueError("public key: n must be an odd integer >= 3")
        if not 0 < hs < n * n or gmpy2.gcd(hs, n) != 1:
            raise ValueError("public key: hs must be a unit modulo n²")
        for name, value in (("n", n), ("hs", hs), ("n2", n * n), ("key_bits", n.bit_length())):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "r_bits", int(self.r_bits))
        if not 1 <= self.r_bits <= self.key_bits:
            raise ValueError(f"public key: r_bits={self.r_bits} must lie in [1, key_bits={self.key_bits}]")


@dataclass(frozen=True)
class SecretKey:
    """The primes p, q and their public key; CRT constants are derived once at construction."""

    public_key: PublicKey
    p: mpz = field(repr=False)
    q: mpz = field(repr=False)
    p2: mpz = field(init=False, repr=False, compare=False)
    q2: mpz = field(init=False, repr=False, compare=False)
    hp: mpz = field(init=False, repr=False, compare=False)
    hq: mpz = field(init=False, repr=False, compare=False)
    q_inv_p: mpz = field(init=False, repr=False, compare=False)  # q^-1 mod p, joins m_p, m_q
    q2_inv_p2: mpz = field(init=False, repr=False, compare=False)  # (q²)^-1 mod p², joins randomizers

    def __post_init__(self) -> None:
        p, q, n = mpz(self.p), mpz(self.q), self.public_key.n
        if p == q or p * q != n or p < 3 or q < 3:
            raise ValueError("secret key: p and q must be distinct factors with p·q = n of the public key")
        p2, q2, g = p * p, q * q, n + 1
        hp = gmpy2.invert((gmpy2.powmod(g, p - 1, p2) - 1) // p, p)  # L_p(g^(p-1) mod p²)^-1 mod p
        hq = gmpy2.invert((gmpy2.powmod(g, q - 1, q2) - 1) // q, q)
        derived = dict(p=p, q=q, p2=p2, q2=q2, hp=hp, hq=hq, q_inv_p=gmpy2.invert(q, p))
        derived["q2_inv_p2"] = gmpy2.invert(q2, p2)
        for name, value in derived.items():
            object.__setattr__(self, name, value)
        # hs must be an n-th residue (order dividing p-1 mod p²), else ciphertexts would not decrypt
        hs = self.public_key.hs
        if gmpy2.powmod(hs, p - 1, p2) != 1 or gmpy2.powmod(hs, q - 1, q2) != 1:
            raise ValueError("secret key: the public key's hs is not an n-th residue modulo n²")

    def _crt(self, r_p: mpz, r_q: mpz) -> mpz:
        """The x mod n² with x ≡ r_p (mod p²), x ≡ r_q (mod q²) (Garner's formula)."""
        return r_q + ((r_p - r_q) * self.q2_inv_p2 % self.p2) * self.q2


def _random_prime(bits: int) -> mpz:
    """A random prime of exactly ``bits`` bits whose top two bits are set (so p·q has 2·bits bits)."""
    while True:
        start = mpz(secrets.randbits(bits)) | (mpz(3) << (bits - 2)) | 1
        prime = gmpy2.next_prime(start)  # GMP: trial division + Baillie-PSW + Miller-Rabin rounds
        if prime.bit_length() == bits:
            return prime


def generate_keypair(
    key_bits: int = MIN_KEY_BITS, *, r_bits: int | None = None, allow_weak_keys: bool = False
) -> tuple[PublicKey, SecretKey]:
    """Draw p, q from the OS RNG so n = p·q has exactly ``key_bits`` bits; g = n + 1 (implicit)."""
    r_bits = key_bits // 2 if r_bits is None else r_bits
    _check_strength(key_bits, r_bits, allow_weak_keys)
    while True:
        p, q = _random_prime(key_bits - key_bits // 2), _random_prime(key_bits // 2)
        n = p * q
        if p != q and n.bit_length() == key_bits and gmpy2.gcd(n, (p - 1) * (q - 1)) == 1:
            break
    while True:  # DJN: h = -x² mod n for a random unit x
        x = mpz(secrets.randbelow(int(n) - 2) + 2)
        if gmpy2.gcd(x, n) == 1:
            break
    hs = gmpy2.powmod(n - x * x % n, n, n * n)
    pk = PublicKey(n, hs, r_bits)
    return pk, SecretKey(pk, p, q)


def public_key_to_dict(pk: PublicKey) -> dict[str, Any]:
    """JSON-able public key: integers as hex strings; nothing secret."""
    return {"scheme": _SCHEME, "kind": "public", "n": hex(pk.n), "hs": hex(pk.hs), "r_bits": pk.r_bits}


def secret_key_to_dict(sk: SecretKey) -> dict[str, Any]:
    """JSON-able secret key: its public key plus p and q as hex strings."""
    return {
        "scheme": _SCHEME,
        "kind": "secret",
        "public_key": public_key_to_dict(sk.public_key),
        "p": hex(sk.p),
        "q": hex(sk.q),
    }


def _field(d: Any, name: str, kind: str) -> Any:
    if not isinstance(d, dict) or d.get("scheme") != _SCHEME or d.get("kind") != kind:
        raise ValueError(f"not a {_SCHEME} {kind} key (wrong 'scheme' or 'kind' field)")
    if name not in d:
        raise ValueError(f"{kind} key has no '{name}' field")
    return d[name]


def _hex(d: Any, name: str, kind: str) -> mpz:
    value = _field(d, name, kind)
    try:
        return mpz(int(value, 16))
    except (TypeError, ValueError):
        raise ValueError(f"{kind} key field '{name}' is not a hex string") from None


def public_key_from_dict(d: dict[str, Any], *, allow_weak_keys: bool = False) -> PublicKey:
    """Inverse of `public_key_to_dict`; checks the key's strength like `generate_keypair`."""
    n, hs, r_bits = _hex(d, "n", "public"), _hex(d, "hs", "public"), _field(d, "r_bits", "public")
    if not isinstance(r_bits, int) or isinstance(r_bits, bool):
        raise ValueError("public key field 'r_bits' is not an integer")
    _check_strength(n.bit_length(), r_bits, allow_weak_keys)
    return PublicKey(n, hs, r_bits)


def secret_key_from_dict(d: dict[str, Any], *, allow_weak_keys: bool = False) -> SecretKey:
    """Inverse of `secret_key_to_dict`; checks p·q = n and that hs is an n-th residue."""
    pk = public_key_from_dict(_field(d, "public_key", "secret"), allow_weak_keys=allow_weak_keys)
    return SecretKey(pk, _hex(d, "p", "secret"), _hex(d, "q", "secret"))


def _write_new(path: Path, text: str, mode: int, overwrite: bool) -> None:
    if path.exists() and overwrite:
        path.unlink()  # a fresh inode: O_CREAT's mode only applies to files it creates
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), mode)  # umask may only have removed bits; set exactly, before any data
        f.write(text)


def save_keypair(
    pk: PublicKey, sk: SecretKey, directory: str | os.PathLike[str], *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``paillier_public.json`` (0644) and ``paillier_secret.json`` (created 0600) into directory."""
    if sk.public_key != pk:
        raise ValueError("save_keypair: the secret key belongs to a different public key")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public_path, secret_path = folder / PUBLIC_FILE, folder / SECRET_FILE
    if not overwrite and (public_path.exists() or secret_path.exists()):
        raise FileExistsError(f"{folder} already holds a key pair; pass overwrite=True to replace it")
    _write_new(secret_path, json.dumps(secret_key_to_dict(sk), indent=1), 0o600, overwrite)
    _write_new(public_path, json.dumps(public_key_to_dict(pk), indent=1), 0o644, overwrite)
    return public_path, secret_path


def _load(path: str | os.PathLike[str], parse: Any, allow_weak_keys: bool) -> Any:
    try:
        return parse(json.loads(Path(path).read_text(encoding="utf-8")), allow_weak_keys=allow_weak_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON key file ({err})") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_public_key(path: str | os.PathLike[str], *, allow_weak_keys: bool = False) -> PublicKey:
    """Read a public key file written by `save_keypair` (a secret key file is rejected)."""
    return _load(path, public_key_from_dict, allow_weak_keys)


def load_secret_key(path: str | os.PathLike[str], *, allow_weak_keys: bool = False) -> SecretKey:
    """Read a secret key file written by `save_keypair`; checks it against its public key."""
    return _load(path, secret_key_from_dict, allow_weak_keys)
