"""Secure aggregation over the Flower runtime: which process loads which key file, and what it checks.

Keys come from ``fedloom keygen DIR``: ``paillier_public.json`` (0644) and ``paillier_secret.json`` (0600).
Each process reads its own ``secure.key_dir`` (a per-machine path, left out of the config hash):

- the **server** loads ``paillier_public.json`` only — this module never opens the secret file for it — and
  builds its :class:`~fedloom.secure.base.ServerCipher` from public bytes: it adds ciphertexts and nothing
  more (:func:`load_server_side`);
- every **client** loads the public key and encrypts ``(w_i/w_ref)·diff_i`` and ``w_i``; a client whose
  ``key_dir`` also holds the secret file (mode 0600, checked) is a **key holder**: it decrypts the
  aggregate the server sends it, never a single update (:func:`load_client_side`).

Both sides fingerprint the public key (:func:`key_fingerprint`); the server refuses a client whose
fingerprint differs from its own, since the config hash cannot see ``secure.key_dir``. The packing
parameters (``bits``, ``clip``, ``max_summands = k``) come from the config, which the hash does cover.
Nothing here imports Flower; the Paillier code (gmpy2) is imported only when a secure run needs it.
"""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import FedloomError

__all__ = [
    "DEPLOYABLE_METHODS",
    "deploy_refusal",
    "key_fingerprint",
    "public_key_fingerprint",
    "ServerSecure",
    "ClientSecure",
    "load_server_side",
    "load_client_side",
]

DEPLOYABLE_METHODS = ("paillier", "paillier-per-value")


def deploy_refusal(cfg: Config) -> str | None:
    """Why the Flower runtime cannot run ``cfg``'s secure section (one line), or None when it can."""
    sec = getattr(cfg, "secure", None)
    method = getattr(sec, "method", "none")
    if method == "none":
        return None
    if sec.protocol != "secagg":
        return (
            f"secure.protocol {sec.protocol} (the book's 15.4: the server holds the key) runs only in "
            "`fedloom run`; over Flower use secure.protocol: secagg"
        )
    if method not in DEPLOYABLE_METHODS:
        return (
            f"secure.method {method}: secure aggregation over Flower supports {' and '.join(DEPLOYABLE_METHODS)}; "
            f"use `fedloom run` for {method}, or set secure.method: paillier"
        )
    if sec.weight_ref is None and cfg.lambda_ is None:
        return (
            "secure aggregation over Flower with FedAvg needs secure.weight_ref (a constant every party "
            "shares; about the average client's sample count): clients encrypt (n_i/weight_ref)·diff_i"
        )
    if not sec.key_dir:
        return (
            "secure aggregation over Flower needs secure.key_dir on every machine: run `fedloom keygen DIR` once, "
            "give DIR/paillier_public.json to the server and every client, and DIR/paillier_secret.json "
            "only to the key-holder client(s)"
        )
    return None


def _paillier():
    try:
        from ..secure import paillier, paillier_scheme
    except ImportError as e:
        raise FedloomError(f"secure.method paillier needs gmpy2: pip install 'fedloom[he]' ({e})") from None
    return paillier, paillier_scheme


def key_fingerprint(pk) -> str:
    """32 hex digits of SHA-256 over the canonical JSON of the public key (n, hs, r_bits)."""
    paillier, _ = _paillier()
    canon = json.dumps(paillier.public_key_to_dict(pk), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:32]


def _load_public(cfg: Config):
    paillier, _ = _paillier()
    sec = cfg.secure
    path = Path(sec.key_dir) / paillier.PUBLIC_FILE
    if not path.is_file():
        raise FedloomError(
            f"secure.key_dir {sec.key_dir}: no {paillier.PUBLIC_FILE} (write the key pair with `fedloom keygen DIR` "
            "and copy its public file here)"
        )
    try:
        pk = paillier.load_public_key(path, allow_weak_keys=sec.allow_weak_keys)
    except (OSError, ValueError) as e:
        raise FedloomError(f"secure.key_dir {sec.key_dir}: {e}") from None
    if pk.key_bits != sec.key_bits:
        raise FedloomError(
            f"secure.key_dir {sec.key_dir}: the public key has {pk.key_bits} bits, the config says "
            f"secure.key_bits {sec.key_bits}"
        )
    return pk


def _public_bytes(cfg: Config, pk) -> bytes:
    _, scheme = _paillier()
    sec = cfg.secure
    return scheme.paillier_public_bytes(pk, sec.method == "paillier", sec.bits, sec.clip, cfg.k)


def public_key_fingerprint(cfg: Config) -> str:
    """Check ``secure.key_dir``'s public key file (a start-up check for ``fedloom server``): its fingerprint."""
    return key_fingerprint(_load_public(cfg))


@dataclass
class ServerSecure:
    """The server's whole secure-aggregation material: public bytes and a cipher that can only add."""

    method: str
    public: bytes
    fingerprint: str
    cipher: object  # ServerCipher: built from `public`, holds no secret key
    key_bits: int
    ciphertexts: int  # per client update: the packed (or per-value) plaintexts + 1 for the weight
    width: int  # bytes per ciphertext on the wire
    secret_nearby: bool  # the server's key_dir also holds the secret file (not read; the log warns)

    @property
    def payload_bytes(self) -> int:
        return self.ciphertexts * self.width


def load_server_side(cfg: Config, num_params: int) -> ServerSecure:
    """Load the public key from ``secure.key_dir`` (never the secret file) and build the ServerCipher."""
    paillier, scheme = _paillier()
    from ..secure import make_server_cipher
    from ..secure.packing import Packer

    sec = cfg.secure
    pk = _load_public(cfg)
    public = _public_bytes(cfg, pk)
    if sec.method == "paillier":
        plaintexts = Packer(pk.n.bit_length(), sec.bits, sec.clip, cfg.k).num_plaintexts(num_params)
    else:
        plaintexts = num_params
    return ServerSecure(
        method=sec.method,
        public=public,
        fingerprint=key_fingerprint(pk),
        cipher=make_server_cipher(sec.method, public),
        key_bits=pk.key_bits,
        ciphertexts=plaintexts + 1,
        width=(2 * pk.key_bits + 7) // 8,
        secret_nearby=(Path(sec.key_dir) / paillier.SECRET_FILE).exists(),
    )


@dataclass
class ClientSecure:
    """A client's material: the public-key cipher, and the key holder when this client holds the secret."""

    cipher: object  # ClientCipher (public key)
    holder: object | None  # KeyHolder, only on a key-holder client
    fingerprint: str

    def payload_bytes(self, num_params: int) -> int:
        """The exact size of one client's ciphertexts for a model of ``num_params`` values."""
        pk, packer = self.cipher.pk, self.cipher.packer
        plaintexts = packer.num_plaintexts(num_params) if packer is not None else num_params
        return (plaintexts + 1) * ((2 * pk.key_bits + 7) // 8)


def load_client_side(cfg: Config) -> ClientSecure:
    """The public key from ``secure.key_dir``; the secret key too when the directory holds it (mode 0600)."""
    paillier, scheme = _paillier()
    sec = cfg.secure
    pk = _load_public(cfg)
    public = _public_bytes(cfg, pk)
    holder = None
    secret = Path(sec.key_dir) / paillier.SECRET_FILE
    if secret.exists():
        mode = stat.S_IMODE(secret.stat().st_mode)
        if mode & 0o077:
            raise FedloomError(
                f"{secret} is readable by other users (mode {mode:04o}); the secret key must be private: "
                f"chmod 600 {secret}"
            )
        try:
            sk = paillier.load_secret_key(secret, allow_weak_keys=sec.allow_weak_keys)
        except (OSError, ValueError) as e:
            raise FedloomError(f"secure.key_dir {sec.key_dir}: {e}") from None
        if sk.public_key != pk:
            raise FedloomError(
                f"secure.key_dir {sec.key_dir}: {paillier.SECRET_FILE} and {paillier.PUBLIC_FILE} are not one key "
                "pair (copy both from the same `fedloom keygen` run)"
            )
        holder = scheme.PaillierKeyHolder(
            pk.key_bits,
            packed=sec.method == "paillier",
            bits=sec.bits,
            clip=sec.clip,
            max_summands=cfg.k,
            allow_weak_keys=sec.allow_weak_keys,
            workers=sec.workers,
            keys=(pk, sk),
        )
        assert holder.public_bytes() == public  # one layout for the key holder and every other party
    return ClientSecure(scheme.PaillierClientCipher(public), holder, key_fingerprint(pk))
