"""Homomorphic encryption for FL: Paillier (packed, per-value), CKKS, secure aggregation, the book's 15.4.

Builders map a config's ``secure`` section to the roles of :mod:`fedloom.secure.base`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CONFIG_WORDS, ConfigError, user_words
from .base import ClientCipher, Decrypted, KeyHolder, ServerCipher

__all__ = ["KeyHolder", "ClientCipher", "ServerCipher", "Decrypted", "make_keyholder", "make_server_cipher"]


def make_keyholder(sec, max_summands: int) -> KeyHolder:
    """The key holder for ``secure.method`` (keys from ``secure.key_dir`` or freshly generated)."""
    if sec.method in ("paillier", "paillier-per-value"):
        try:
            from .paillier import PUBLIC_FILE, SECRET_FILE, load_public_key, load_secret_key
            from .paillier_scheme import PaillierKeyHolder
        except ImportError as e:
            raise ConfigError(f"secure.method {sec.method} needs gmpy2: pip install 'fedloom[he]' ({e})") from None

        keys = None
        if sec.key_dir is not None:
            d = Path(sec.key_dir)
            try:
                pk = load_public_key(d / PUBLIC_FILE, allow_weak_keys=sec.allow_weak_keys)
                keys = (pk, load_secret_key(d / SECRET_FILE, allow_weak_keys=sec.allow_weak_keys))
            except (OSError, ValueError) as e:
                raise ConfigError(user_words(f"secure.key_dir {d}: {e}", CONFIG_WORDS)) from None
            if keys[1].public_key != pk:  # two files from different `fedloom keygen` runs
                raise ConfigError(f"secure.key_dir {d}: {PUBLIC_FILE} and {SECRET_FILE} belong to different key pairs")
        return PaillierKeyHolder(
            sec.key_bits,
            packed=sec.method == "paillier",
            bits=sec.bits,
            clip=sec.clip,
            max_summands=max_summands,
            allow_weak_keys=sec.allow_weak_keys,
            workers=sec.workers,
            keys=keys,
        )
    if sec.method == "ckks":
        try:
            from .ckks import CKKSKeyHolder

            return CKKSKeyHolder(max_summands=max_summands)
        except ImportError as e:
            raise ConfigError(f"secure.method ckks needs TenSEAL: pip install 'fedloom[he]' ({e})") from None
    raise ConfigError(f"secure.method '{sec.method}' has no key holder")


def make_server_cipher(method: str, public: bytes) -> ServerCipher:
    """The server's cipher, built from public bytes only."""
    if method == "ckks":
        from .ckks import ckks_server_cipher

        return ckks_server_cipher(public)
    from .paillier_scheme import paillier_server_cipher

    return paillier_server_cipher(public)
