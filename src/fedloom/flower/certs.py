"""``fedloom certs DIR [--clients N]``: a private CA, a server certificate and client keys for a federation.

What the server reads (``fedloom server --tls-dir DIR``): ``ca.pem``, ``server.pem``, ``server.key`` and, with
``--clients N``, ``clients.json`` (the registry: client id -> public key, see ``identity.py``).
What it never reads: ``ca/ca.key``, the CA's private key (keep it offline, or delete it once the certificates
are made: whoever holds it can impersonate the server), and ``clients/<id>.key`` (client ``id``'s private
key, for that client's machine only: ``fedloom client --key``); ``clients/<id>.pub`` is its public half.
Every client gets ``ca.pem``. Private keys are written mode 0600, also over older files.

The server certificate names ``localhost``, ``127.0.0.1`` and ``::1`` plus every ``--host`` given, as DNS
names or IP addresses: clients must reach the server by one of them. TLS keys are ECDSA P-256, client keys
P-384 (Flower's SuperNode keys); certificates are valid for ``days`` days. For a production federation, use
certificates from your organisation's CA instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import FedloomError
from .identity import REGISTRY_FILE, Registry, generate_key, write_private_file, write_private_key, write_public_key

__all__ = ["make_certs", "make_client_keys", "DEFAULT_HOSTS"]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedloom"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private_file(path, data)


def make_client_keys(out: Path, clients: int) -> dict[str, Path]:
    """``out/clients/<id>.key`` and ``.pub`` for ids 0..clients-1, and the registry ``out/clients.json``."""
    folder = out / "clients"
    folder.mkdir(exist_ok=True)
    os.chmod(folder, 0o700)
    keys = {}
    for cid in range(clients):
        key = generate_key()
        write_private_key(folder / f"{cid}.key", key)
        write_public_key(folder / f"{cid}.pub", key.public_key())
        keys[cid] = key.public_key()
    Registry(keys).save(out / REGISTRY_FILE)
    return {"registry": out / REGISTRY_FILE, "client_keys": folder}


def make_certs(out: str | Path, hosts: list[str] | None = None, days: int = 365, clients: int = 0) -> dict[str, Path]:
    """Write the CA, the server certificate and ``clients`` client key pairs under ``out``; paths by role."""
    out = Path(out)
    if clients < 0:
        raise FedloomError(f"--clients {clients}: expected a number of clients >= 0")
    if days < 1:
        raise FedloomError(f"--days {days}: expected at least 1")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca").mkdir(exist_ok=True)
    os.chmod(out / "ca", 0o700)
    names = list(dict.fromkeys([*DEFAULT_HOSTS, *(hosts or [])]))
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)  # 5 min: tolerate clock skew

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fedloom test CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    paths = {"ca": out / "ca.pem", "ca_key": out / "ca" / "ca.key", "cert": out / "server.pem"}
    paths["key"] = out / "server.key"
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths["ca_key"], ca_key)
    _write_key(paths["key"], key)
    old = out / "ca.key"  # where older fedloom versions wrote it, inside the server's folder; now replaced
    if old.is_file():
        old.unlink()
    if clients:  # client keys are not signed by the CA: new certificates keep an existing registry
        paths.update(make_client_keys(out, clients))
    return paths
