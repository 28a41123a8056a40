"""Roles of an additively homomorphic scheme in secure aggregation.

The server must be able to add encrypted updates and must never be able to read one. So a scheme is split
into three objects, each built from only the key material its role may hold:

- :class:`KeyHolder` — holds the secret key; decrypts the *aggregate* only. In simulation it lives on the
  clients' side; in deployment it is whoever ran ``fedloom keygen`` (a client, or a separate party).
- :class:`ClientCipher` — public material only; a client encrypts ``w_i·diff_i`` and its weight ``n_i``.
- :class:`ServerCipher` — public material only; adds ciphertexts. Built from ``KeyHolder.public_bytes()``,
  so it cannot hold a secret key by construction.

Payloads are plain bytes (fixed-width big-endian integers, or a library's own serialization), never pickle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["KeyHolder", "ClientCipher", "ServerCipher", "Decrypted"]


@dataclass
class Decrypted:
    values: np.ndarray  # [length] float64: Σ_i w_i·diff_i
    weight: int  # Σ_i n_i (the clients' sample counts, summed under encryption)


class ClientCipher(ABC):
    @abstractmethod
    def encrypt(self, values: np.ndarray, weight: int, rng: np.random.Generator) -> bytes:
        """Encrypt ``values`` ``[length]`` (already multiplied by the client's weight) and an integer weight."""


class ServerCipher(ABC):
    @abstractmethod
    def add(self, payloads: Sequence[bytes]) -> bytes:
        """The encrypted sum of the clients' payloads (the server's whole job: it cannot decrypt)."""


class KeyHolder(ABC):
    name: str

    @abstractmethod
    def public_bytes(self) -> bytes:
        """Everything the clients and the server may know: public key / context without secret key."""

    @abstractmethod
    def client_cipher(self) -> ClientCipher: ...

    @abstractmethod
    def decrypt(self, payload: bytes, num_summands: int, length: int) -> Decrypted:
        """Decrypt an aggregate of ``num_summands`` client payloads of ``length`` values each."""
