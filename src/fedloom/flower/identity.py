"""Client identities: one ECDSA key pair per client id, a registry of them on the server, signed statements.

``fedloom certs DIR --clients N`` writes ``DIR/clients/<id>.key`` (OpenSSH private key, mode 0600),
``DIR/clients/<id>.pub`` (OpenSSH public key) and ``DIR/clients.json``, the registry ``id -> public key`` that
``fedloom server --tls-dir DIR`` admits. Keys are ECDSA on NIST P-384, the curve Flower's own SuperNode
authentication generates (``flwr.supercore.primitives.asymmetric``), so one key serves both layers:

- Flower's SuperNode authentication (``flower-supernode --auth-supernode-private-key``): every Fleet request
  carries a signed timestamp; the SuperLink knows only the registered keys and binds each to one node id;
- fedloom's own admission: the server's ``hello`` carries a fresh random nonce, the client signs
  ``(nonce, node id, client id, config hash)`` (:func:`hello_statement`), and the server verifies the
  signature with the key registered for the *claimed* id before admitting it (a key registered for client 1
  cannot claim to be client 0).

:func:`statement` builds the signed bytes of any such claim (a purpose string and named fields, canonical
JSON), so that other messages (a client's ciphertext, say) can be signed the same way. Signatures are ECDSA
with SHA-256 (FIPS 186-5), as Flower's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import FedloomError

__all__ = [
    "REGISTRY_FILE",
    "Registry",
    "generate_key",
    "write_private_key",
    "write_public_key",
    "load_private_key",
    "public_key_text",
    "parse_public_key",
    "fingerprint",
    "statement",
    "hello_statement",
    "sign",
    "verify",
    "write_private_file",
    "b64_public_pem",
]

REGISTRY_FILE = "clients.json"
_CURVE = ec.SECP384R1  # Flower's SuperNode keys: any NIST curve is accepted, P-384 is what flwr generates


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(_CURVE())


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only, also over an older file with a looser mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # O_CREAT's mode applies to new files only
        f.write(data)


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """OpenSSH format: what ``flower-supernode --auth-supernode-private-key`` reads."""
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    write_private_file(path, data)


def public_key_text(key: ec.EllipticCurvePublicKey) -> str:
    """One line, OpenSSH format (``ecdsa-sha2-nistp384 AAAA...``)."""
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode("ascii")


def write_public_key(path: Path, key: ec.EllipticCurvePublicKey) -> None:
    path.write_text(public_key_text(key) + "\n", encoding="ascii")


def parse_public_key(text: str, where: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_ssh_public_key(text.strip().encode("ascii"))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as e:
        raise FedloomError(f"{where}: not an OpenSSH public key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise FedloomError(f"{where}: expected an ECDSA (NIST curve) public key, got {type(key).__name__}")
    return key


def load_private_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """A client's private key (``--key FILE``): must exist, be private to its owner and be ECDSA."""
    path = Path(path)
    if not path.is_file():
        raise FedloomError(f"--key {path}: file not found (a client key from `fedloom certs DIR --clients N`)")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise FedloomError(f"--key {path}: readable by other users (mode {mode:04o}); chmod 600 {path}")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise FedloomError(f"--key {path}: not an OpenSSH private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FedloomError(f"--key {path}: expected an ECDSA key (fedloom certs writes P-384)")
    return key


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """16 hex digits of SHA-256 over the public key's OpenSSH line (for logs)."""
    return hashlib.sha256(public_key_text(key).encode("ascii")).hexdigest()[:16]


def statement(purpose: str, **fields: Any) -> bytes:
    """The bytes a signature covers: canonical JSON of a purpose and named fields (bytes as hex).

    The purpose keeps a signature made for one kind of claim from being replayed as another."""

    def plain(v: Any) -> Any:
        return v.hex() if isinstance(v, bytes) else v

    body = {"purpose": f"fedloom {purpose}", **{k: plain(v) for k, v in fields.items()}}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def hello_statement(nonce: bytes, node_id: str, client_id: int, config_hash: str) -> bytes:
    return statement("hello v1", nonce=nonce, node=node_id, client=client_id, config_hash=config_hash)


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


def verify(key: ec.EllipticCurvePublicKey, message: bytes, signature: bytes) -> bool:
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False


@dataclass
class Registry:
    """Client id -> public key: who may join, as which id (``DIR/clients.json``)."""

    keys: dict[int, ec.EllipticCurvePublicKey]

    @classmethod
    def load(cls, path: str | Path) -> Registry:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            entries = raw["clients"]
            keys = {int(c): parse_public_key(text, f"{path} client {c}") for c, text in entries.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise FedloomError(f"{path}: not a client registry from `fedloom certs DIR --clients N` ({e})") from None
        if not keys:
            raise FedloomError(f"{path}: no clients registered")
        return cls(keys)

    @classmethod
    def from_texts(cls, texts: dict[str | int, str]) -> Registry:
        return cls({int(c): parse_public_key(t, f"client {c}") for c, t in texts.items()})

    def texts(self) -> dict[str, str]:
        return {str(c): public_key_text(k) for c, k in sorted(self.keys.items())}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"clients": self.texts()}, indent=1) + "\n", encoding="utf-8")

    def client_of(self, public_pem_or_ssh: bytes) -> int | None:
        """The client id a public key (PEM, as Flower sends it, or OpenSSH) is registered for, else None."""
        try:
            if public_pem_or_ssh.startswith(b"-----"):
                key = serialization.load_pem_public_key(public_pem_or_ssh)
            else:
                key = serialization.load_ssh_public_key(public_pem_or_ssh)
        except (ValueError, UnsupportedAlgorithm):
            return None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return None
        text = public_key_text(key)
        return next((c for c, k in self.keys.items() if public_key_text(k) == text), None)


def b64_public_pem(key: ec.EllipticCurvePublicKey) -> str:
    """The value of Flower's ``flwr-public-key`` header for ``key`` (base64 of the PEM)."""
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(pem).decode("ascii")
