"""The DECRYPT stage's rules: a key holder decrypts only a sum it has verified and recomputed itself.

A key holder that decrypts whatever it is handed is a decryption oracle for the server: a single client's
ciphertext labelled "an aggregate of 2", a victim's ciphertext multiplied by the server's own encryption of a
known vector, or a round in which every other client was told to scale its update to nothing would each reveal
one client's update. :class:`GuardedKeyHolder` is the only way fedloom's rounds reach a secret key (in the
simulation and on a deployed key-holder client alike), and it decrypts a round's sum only when

1. the round is newer than every round it decrypted before (each round once, in increasing order; the very
   same contributions of the last round may be asked for again, by a server resumed after a crash, and get
   the same answer, which reveals nothing new);
2. the sum has at least ``secure.min_summands`` contributions from distinct clients;
3. every contribution has the federation's exact ciphertext size (checked before any arithmetic) and, when
   a ``verify`` function is given (the Flower runtime: each client's registered public key), a valid
   signature by its client over (config hash, round, client, sample count, w_ref, SHA-256 of the ciphertexts);
4. it adds the contributions itself: the aggregate it decrypts is never one the server made;
5. the decrypted total weight equals the weights of the sample counts the clients declared (and signed), each
   count in ``1..max_samples``; the weight is decoded as a signed integer, so a "negative" one is caught.

What it cannot see: whether one client's plaintext stayed inside ``±clip`` (a client that encrypts an
out-of-range packed value moves the sum by up to the slot headroom; the packing refuses a sum whose slots
overflow). Proving each plaintext in range needs zero-knowledge range proofs, which fedloom does not have:
``docs/security.md`` lists this under what does not hold.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .base import Decrypted, KeyHolder

__all__ = ["Contribution", "GuardedKeyHolder", "KeyHolderRefusal", "contribution_message"]


class KeyHolderRefusal(ValueError):
    """The key holder will not decrypt this round (the message says which rule failed)."""


@dataclass(frozen=True)
class Contribution:
    """One client's encrypted update as the key holder receives it."""

    client: int
    payload: bytes  # the client's ciphertexts, fixed-width big-endian (or the scheme's serialization)
    num_samples: int  # declared in clear and signed; its weight must match the encrypted one in the sum
    signature: bytes = b""


def contribution_message(
    config_hash: str, rnd: int, client: int, num_samples: int, weight_ref: float, payload: bytes
) -> bytes:
    """The bytes a client signs for its encrypted update of round ``rnd`` (domain-separated, fixed layout)."""
    head = struct.pack(">qqqd", rnd, client, num_samples, weight_ref)
    return b"fedloom-secagg-v1\0" + config_hash.encode("ascii") + b"\0" + head + hashlib.sha256(payload).digest()


class GuardedKeyHolder:
    """A :class:`KeyHolder` behind the rules of the module docstring."""

    def __init__(
        self,
        holder: KeyHolder,
        server_cipher,
        weight: Callable[[int], float],
        *,
        min_summands: int,
        payload_bytes: int | None,
        weight_ref: float,
        max_samples: int,
        config_hash: str = "",
        verify: Callable[[int, bytes, bytes], bool] | None = None,
    ):
        self.holder, self.cipher, self.weight = holder, server_cipher, weight
        self.min_summands, self.payload_bytes = max(1, min_summands), payload_bytes
        self.weight_ref, self.max_samples, self.config_hash = weight_ref, max_samples, config_hash
        self.verify = verify
        self.last_round = 0  # rounds decrypted so far are all ≤ this
        self._last: tuple[bytes, Decrypted] | None = None  # the last round's contributions digest and its sums

    def decrypt_round(self, rnd: int, contributions: Sequence[Contribution], length: int) -> Decrypted:
        """The decrypted sum of round ``rnd``'s contributions, or :class:`KeyHolderRefusal` saying why not."""
        digest = _digest(rnd, contributions)
        if rnd == self.last_round and self._last is not None and self._last[0] == digest:
            return self._last[1]
        if rnd <= self.last_round:
            raise KeyHolderRefusal(
                f"round {rnd}: already decrypted round {self.last_round}; each round once, in increasing order"
            )
        clients = [c.client for c in contributions]
        if len(set(clients)) != len(clients):
            raise KeyHolderRefusal(f"round {rnd}: a client contributes twice ({sorted(clients)})")
        if len(clients) < self.min_summands:
            raise KeyHolderRefusal(
                f"round {rnd}: {len(clients)} contribution(s), fewer than secure.min_summands {self.min_summands}: "
                "the sum could reveal a single client's update"
            )
        for c in contributions:
            self._check(rnd, c)
        aggregate = self.cipher.add([c.payload for c in contributions])  # ADD, by the key holder itself
        try:
            result = self.holder.decrypt(aggregate, len(contributions), length)
        except ValueError as e:
            raise KeyHolderRefusal(f"round {rnd}: the sum does not decode ({e})") from None
        expected = sum(self.weight(c.num_samples) for c in contributions)
        if result.weight != round(expected):
            raise KeyHolderRefusal(
                f"round {rnd}: the encrypted weights sum to {result.weight}, the declared sample counts to "
                f"{expected:g}: a client encrypted another weight than it declared"
            )
        self.last_round, self._last = rnd, (digest, result)
        return result

    def _check(self, rnd: int, c: Contribution) -> None:
        if self.payload_bytes is not None and len(c.payload) != self.payload_bytes:
            raise KeyHolderRefusal(
                f"round {rnd}: client {c.client}'s ciphertexts are {len(c.payload)} bytes, "
                f"expected {self.payload_bytes}"
            )
        if not 1 <= c.num_samples <= self.max_samples:
            raise KeyHolderRefusal(
                f"round {rnd}: client {c.client} declares {c.num_samples} samples (1..{self.max_samples})"
            )
        if self.verify is not None:
            msg = contribution_message(self.config_hash, rnd, c.client, c.num_samples, self.weight_ref, c.payload)
            if not self.verify(c.client, msg, c.signature):
                raise KeyHolderRefusal(f"round {rnd}: client {c.client}'s signature does not verify")


def _digest(rnd: int, contributions: Sequence[Contribution]) -> bytes:
    h = hashlib.sha256(struct.pack(">q", rnd))
    for c in contributions:
        h.update(struct.pack(">qq", c.client, c.num_samples) + hashlib.sha256(c.payload).digest())
    return h.digest()
