"""Which Flower node is which fedloom client, and what the server has seen of each client.

A client is known to the server only after a ``hello`` exchange: Flower names SuperNodes by a random node id,
fedloom by ``--client-id``. A client that dies and comes back gets a new node id; its new hello supersedes the
old node. A node that let a round time out is *suspect*: it is not sent work again until it answers a hello.

The health kept here complements :class:`fedloom.server.ClientHealth` (rounds picked, joined, failed) with
what only a deployment has: when the client was last seen, how many times it (re)connected, whether it is
connected now.

:class:`Admission` decides whether a hello really comes from the client it names (``--tls-dir`` with a
client registry): the node must be the one Flower bound to that client's registered key, and the hello must
carry the client's signature over the nonce the server sent that node (``identity.py``).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .fingerprint import config_diff
from .identity import Registry, hello_statement, verify

__all__ = ["NodeBook", "Presence", "Admission"]


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
    own_refusals: list[dict] = field(default_factory=list)
    external_refusals: str | None = None  # JSON lines the public proxy writes (nodes it refused itself)

    @property
    def refusals(self) -> list[dict]:
        """Nodes not admitted, and why: by the hello exchange, and by the proxy (unknown client keys)."""
        extra = []
        path = Path(self.external_refusals) if self.external_refusals else None
        if path is not None and path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            extra = [r for r in (json.loads(line) for line in lines if line.strip()) if r not in self.own_refusals]
        return self.own_refusals + extra

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
        self.own_refusals.append({"node": node, "client": client, "reason": reason, "at": now_iso()})

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
        for n in [n for n in self.refused if n not in online]:  # under node authentication a client keeps its
            del self.refused[n]  # node id across restarts: greet it again when it comes back
            self.hello_sent.pop(n, None)
        return gone

    # --- persistence (resume) -------------------------------------------------------------------------
    def state(self) -> dict:
        return {"presence": {str(c): asdict(p) for c, p in self.presence.items()}, "refusals": self.refusals}

    def load(self, state: dict) -> None:
        self.presence = {int(c): Presence(**{**p, "connected": False}) for c, p in state.get("presence", {}).items()}
        self.own_refusals = list(state.get("refusals", []))


@dataclass
class Admission:
    """Who may be admitted as which client: ``registry`` (client id -> public key) and ``nodes`` (Flower node
    id -> the client id whose key Flower bound it to at registration). Without a registry (``--insecure``)
    every hello is taken at its word: trusted networks only."""

    registry: Registry | None = None
    nodes: dict[str, int] = field(default_factory=dict)
    federation: dict = field(default_factory=dict)  # the server's config minus per-machine fields (for diffs)
    nonces: dict[int, list[bytes]] = field(default_factory=dict)  # node -> nonces of its unanswered hellos

    @classmethod
    def from_job(cls, job: dict, federation: dict) -> Admission:
        auth = job.get("auth")
        if not auth:
            return cls(federation=federation)
        return cls(Registry.from_texts(auth["clients"]), {str(n): int(c) for n, c in auth["nodes"].items()}, federation)

    def greeting(self, node: int) -> dict:
        """The hello fields that identify this greeting: a fresh 32-byte nonce (``secrets``) and the node id."""
        nonce = secrets.token_bytes(32)
        self.nonces.setdefault(node, []).append(nonce)
        del self.nonces[node][:-4]  # a few re-greetings may be in flight; older ones have expired
        return {"nonce": nonce, "node_id": str(node)}

    def check(self, node: int, hello: dict) -> str:
        """Why ``hello`` (a checked reply from ``node``) is not from the client it names; "" when it is."""
        nonces = self.nonces.pop(node, [])
        if self.registry is None:
            return ""
        cid = hello["client_id"]
        bound = self.nodes.get(str(node))
        if bound is None:
            return f"node {node} is not bound to a registered client key"
        if bound != cid:
            return f"claims to be client {cid}, but its key is registered for client {bound}"
        claim = [hello_statement(n, str(node), cid, hello["config_hash"]) for n in nonces]
        if not any(verify(self.registry.keys[cid], m, hello["signature"]) for m in claim):
            return f"the hello is not signed with client {cid}'s registered key (over this greeting's nonce)"
        return ""

    def config_note(self, hello: dict) -> str:
        """The fields where a refusing client's config differs from the server's ("" if it did not say)."""
        try:
            theirs = json.loads(hello.get("federation_json") or "null")
        except ValueError:
            return ""
        if not isinstance(theirs, dict):
            return ""
        diff = config_diff(self.federation, theirs)
        return f"; differing fields (here = the server): {'; '.join(diff)}" if diff else ""
