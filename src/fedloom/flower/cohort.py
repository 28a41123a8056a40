"""The Flower runtime's cohort: the round's answers come as messages from remote clients.

:class:`RemoteCohort` is :class:`fedloom.round.Cohort` for a deployed federation: wait until the sampled clients
are connected (or enough of them), send each a ``train`` message with the broadcast payload, and collect the
answers until all are in, ``runtime.round_timeout`` passes or the missing clients' nodes go offline. It checks
only the transport (the message parses, it answers the message sent to that client for this round); the round
(``fedloom/round.py``) checks, decodes, aggregates and applies what the answers hold. Under secure aggregation
the round's DECRYPT stage reaches a key-holder client through :class:`RemoteKeyHolder`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Message

from ..round import Answer, KeyHolderError, Replies, Task
from ..secure.base import Decrypted
from .protocol import ProtocolError, unpack

if TYPE_CHECKING:
    from .coordinator import Coordinator

__all__ = ["RemoteCohort", "RemoteKeyHolder", "KeyHolderUnavailable"]

_NO_TIMEOUT_TTL = 3600.0  # message TTL when round_timeout is unset (a round then waits for online nodes)


class KeyHolderUnavailable(KeyHolderError):
    """No key-holder client decrypted this round's aggregate (the message says why)."""


class RemoteKeyHolder:
    """The DECRYPT stage as the server reaches it: key-holder clients (``secure.key_holders``) sent ``decrypt``
    messages with the round's signed contributions. It holds no key: :meth:`decrypt_round` asks the connected
    key holders in turn (lowest client id first) until one answers with valid sums, each within
    ``runtime.round_timeout``; each key holder checks and adds the contributions itself (``secure/guard.py``)."""

    def __init__(self, coord: Coordinator, rnd: int):
        self.coord, self.rnd = coord, rnd
        self.stats: dict = {"keyholder": None, "he_decrypt_seconds": 0.0, "keyholder_seconds": 0.0}
        self.stats["bytes_keyholder"] = 0

    def decrypt_round(self, rnd: int, contributions: list, length: int) -> Decrypted:
        coord = self.coord
        holders = coord.key_holders()
        if not holders:
            raise KeyHolderUnavailable(
                "no key holder connected (a client whose secure.key_dir holds paillier_secret.json)"
            )
        fields = {
            "round": rnd,
            "length": length,
            "clients": [c.client for c in contributions],
            "samples": [c.num_samples for c in contributions],
            "payloads": [c.payload for c in contributions],
            "signatures": [c.signature for c in contributions],
        }
        sent_bytes = sum(len(c.payload) + len(c.signature) for c in contributions)
        ttl = (coord.timeout or _NO_TIMEOUT_TTL) + 30.0
        reasons = []
        for cid, node in holders:
            t0 = time.perf_counter()
            (mid,) = coord.grid.push_messages([coord._message("decrypt", node, fields, ttl, str(rnd))])
            if not mid:
                reasons.append(f"client {cid}: the SuperLink did not take the message")
                continue
            coord._pending[mid] = node
            self.stats["bytes_keyholder"] += sent_bytes
            msg = coord._collect({mid: node}).get(mid)
            self.stats["keyholder_seconds"] += time.perf_counter() - t0
            try:
                f = self._check(cid, msg, length)
            except KeyHolderUnavailable as e:
                if msg is None:
                    coord.book.suspect(node)
                reasons.append(f"key holder {cid}: {e}")
                coord.log(f"round {rnd}: key holder {cid} did not decrypt: {e}")
                continue
            values = np.frombuffer(f["values"], dtype="<f8").astype(np.float64)
            self.stats.update(keyholder=cid, he_decrypt_seconds=f["decrypt_seconds"])
            self.stats["bytes_keyholder"] += len(f["values"])
            coord.book.seen(cid)
            return Decrypted(values, f["weight"])
        raise KeyHolderUnavailable("; ".join(reasons))

    def _check(self, cid: int, msg: Message | None, length: int) -> dict:
        coord = self.coord
        if msg is None:
            raise KeyHolderUnavailable(
                "no answer within runtime.round_timeout" if coord.timeout else "its node went offline"
            )
        if msg.has_error():
            raise KeyHolderUnavailable(f"client error: {msg.error.reason}")
        try:
            f = unpack("decrypt", msg.content, reply=True)
        except ProtocolError as e:
            raise KeyHolderUnavailable(f"malformed answer: {e}") from None
        if f["client_id"] != cid or f["round"] != self.rnd:
            raise KeyHolderUnavailable(f"answer for client {f['client_id']} round {f['round']}")
        if not f["ok"]:
            raise KeyHolderUnavailable(f["reason"] or "refused")
        if len(f["values"]) != 8 * length:
            raise KeyHolderUnavailable(f"{len(f['values'])} bytes of sums, expected {8 * length} (float64 x {length})")
        if f["weight"] <= 0 or not np.all(np.isfinite(np.frombuffer(f["values"], dtype="<f8"))):
            raise KeyHolderUnavailable("the decrypted sums are not finite or the weight sum is not positive")
        return f


class RemoteCohort:
    """The Flower runtime's :class:`fedloom.round.Cohort`: the sampled clients reached by messages."""

    def __init__(self, coord: Coordinator):
        self.coord = coord

    def declared_samples(self, client: int) -> int:
        return self.coord.declared.get(client, 0)

    def key_holder(self, rnd: int) -> RemoteKeyHolder:
        return RemoteKeyHolder(self.coord, rnd)

    def train(self, rnd: int, cohort: list[int], down: bytes, task: Task) -> Replies:
        coord, t0 = self.coord, time.perf_counter()
        coord._wait_for(rnd, cohort, first=rnd == coord.start_round)
        t_send = time.perf_counter()
        active = coord.book.active()
        failed = {c: "not connected" for c in cohort if c not in active}
        targets = [c for c in cohort if c in active]
        ttl = (coord.timeout or _NO_TIMEOUT_TTL) + 30.0
        epochs = coord.cfg.local_epochs
        fields = {"round": rnd, "payload": down, "control": task.control}
        msgs = [
            coord._message("train", active[c], {**fields, "epochs": task.epochs.get(c, epochs)}, ttl, str(rnd))
            for c in targets
        ]
        sent: dict[str, int] = {}
        for c, mid in zip(targets, coord.grid.push_messages(msgs) if msgs else []):
            if mid:
                sent[mid] = active[c]
                coord._pending[mid] = active[c]
            else:
                failed[c] = "the SuperLink did not take the message"
        by_node = {n: c for c, n in active.items()}
        replies = coord._collect(sent)
        t_back = time.perf_counter()
        answers = []
        for mid, node in sent.items():
            cid = by_node[node]
            f, reason = coord._answer(rnd, cid, replies.get(mid))
            if f is None:
                failed[cid] = reason
                if mid not in replies:
                    coord.book.suspect(node)
                continue
            coord.book.seen(cid)
            stats = {k: f[k] for k in ("train_seconds", "he_encrypt_seconds", "clipped")}
            n, loss, sig = f["num_samples"], f["train_loss"], f["signature"]
            answers.append(Answer(cid, f["payload"], n, loss, stats, sig, f["steps"], f["control"]))
        row = {
            "wait_seconds": t_send - t0,
            "exchange_seconds": t_back - t_send,
            "client_seconds": max((a.stats["train_seconds"] for a in answers), default=0.0),
        }
        return Replies(answers, failed, len(sent), row)
