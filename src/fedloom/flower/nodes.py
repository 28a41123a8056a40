"""Which Flower node is which fedloom client, and what the server has seen of each client.

A client is known to the server only after a ``hello`` exchange: Flower names SuperNodes by a random node id,
fedloom by ``--client-id``. A client that dies and comes back gets a new node id; its new hello supersedes the
old node. A node that let a round time out is *suspect*: it is not sent work again until it answers a hello.

The health kept here complements :class:`fedloom.server.ClientHealth` (rounds picked, joined, failed) with
what only a deployment has: when the client was last seen, how many times it (re)connected, whether it is
connected now.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

__all__ = ["NodeBook", "Presence"]


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())


@dataclass
class Presence:
    """Deployment-only health of one client."""

    last_seen: str = ""
    connects: int = 0
    node: int = 0
    connected: bool = False


@dataclass
class NodeBook:
    client_of: dict[int, int] = field(default_factory=dict)  # node id -> client id (admitted nodes)
    node_of: dict[int, int] = field(default_factory=dict)  # client id -> its current node id
    hello_pending: dict[str, tuple[int, float]] = field(default_factory=dict)  # message id -> (node, sent at)
    hello_sent: dict[int, float] = field(default_factory=dict)  # node id -> when it was last greeted
    refused: dict[int, str] = field(default_factory=dict)  # node id -> why it was not admitted
    suspects: set[int] = field(default_factory=set)
    presence: dict[int, Presence] = field(default_factory=dict)
    refusals: list[dict] = field(default_factory=list)

    def active(self) -> dict[int, int]:
        """client id -> node id of the clients that can be sent work now."""
        return {c: n for c, n in self.node_of.items() if n not in self.suspects}

    def to_greet(self, online: set[int], now: float, retry_after: float) -> list[int]:
        """Online nodes that need a hello: never greeted, or not admitted (or suspect) and not greeted for
        ``retry_after`` seconds (a greeting expires unanswered after a while; see coordinator.py)."""
        pending = {n for n, _ in self.hello_pending.values()}
        out = []
        for n in sorted(online):
            if n in pending or n in self.refused:
                continue
            stale = (n in self.suspects or n not in self.client_of) and now - self.hello_sent.get(n, 0.0) > retry_after
            if n not in self.hello_sent or stale:
                out.append(n)
        return out

    def new_node_pending(self) -> bool:
        """Whether a node never admitted before is being greeted (a client joining right now)."""
        return any(n not in self.client_of for n, _ in self.hello_pending.values())

    def admit(self, node: int, client: int) -> int | None:
        """Record ``node`` as ``client``; returns the node it replaces, if any."""
        old = self.node_of.get(client)
        if old is not None and old != node:
            self.client_of.pop(old, None)
            self.suspects.discard(old)
        self.client_of[node] = client
        self.node_of[client] = node
        self.suspects.discard(node)
        p = self.presence.setdefault(client, Presence())
        if old != node:
            p.connects += 1
        p.node, p.connected = node, True
        self.seen(client)
        return old if old != node else None

    def refuse(self, node: int, client: int | None, reason: str) -> None:
        self.refused[node] = reason
        self.refusals.append({"node": node, "client": client, "reason": reason, "at": now_iso()})

    def seen(self, client: int) -> None:
        self.presence.setdefault(client, Presence()).last_seen = now_iso()

    def forget_node(self, node: int) -> None:
        """A node Flower reports unavailable: never greet it again; its client (if any) is disconnected."""
        self.refused[node] = "unavailable"
        cid = self.client_of.pop(node, None)
        if cid is not None and self.node_of.get(cid) == node:
            del self.node_of[cid]
            self.presence.setdefault(cid, Presence()).connected = False
        self.suspects.discard(node)

    def suspect(self, node: int) -> None:
        self.suspects.add(node)

    def forget_offline(self, online: set[int]) -> list[int]:
        """Drop admitted nodes Flower no longer lists as online; returns their client ids."""
        gone = [c for c, n in self.node_of.items() if n not in online]
        for c in gone:
            n = self.node_of.pop(c)
            self.client_of.pop(n, None)
            self.suspects.discard(n)
            self.presence.setdefault(c, Presence()).connected = False
        return gone

    # --- persistence (resume) -------------------------------------------------------------------------
    def state(self) -> dict:
        return {"presence": {str(c): asdict(p) for c, p in self.presence.items()}, "refusals": self.refusals}

    def load(self, state: dict) -> None:
        self.presence = {int(c): Presence(**{**p, "connected": False}) for c, p in state.get("presence", {}).items()}
        self.refusals = list(state.get("refusals", []))
