"""The deployed federation: the one round (``fedloom/round.py``) with a cohort of remote clients.

:class:`RemoteCohort` is the Flower runtime's side of :class:`fedloom.round.Cohort`: wait until the cohort is
connected (or enough of it) → one ``train`` message per connected client with the broadcast payload →
answers until all are in, ``runtime.round_timeout`` passes or the missing clients' nodes go offline. It
checks only the transport (the message parses, it comes from the client it was sent to, for this round);
what the answers hold is checked, decoded, aggregated and applied by the round, as in the simulation.
Under secure aggregation the round's DECRYPT stage reaches a key-holder client through
:class:`RemoteKeyHolder` (a ``decrypt`` message); the server itself loads only the public key (``secure.py``).

Polling: Flower's ``Grid.send_and_receive`` sleeps 3 s between pulls; this loop pulls every ``poll`` seconds
(0.05 by default) with the Grid's ``push_messages``/``pull_messages`` and meanwhile greets nodes that join.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import Message
from flwr.common.constant import ErrorCode

from ..config import build_config
from ..round import Round, SecureServer
from ..runs import RunDir, load_checkpoint, write_json
from ..simulation import Federation, weight_ref
from .cohort import RemoteCohort
from .fingerprint import config_hash, federation_dict
from .nodes import Admission, NodeBook
from .protocol import MESSAGE_TYPES, ProtocolError, pack, unpack
from .secure import load_server_side

__all__ = ["Coordinator"]

_HELLO_TTL = 30.0  # seconds a greeting may wait unanswered before it is dropped (and may be sent again)
_REGREET_AFTER = 20.0  # a suspect node is greeted again after this many seconds
_REFRESH_EVERY = 0.5  # seconds between looks at the list of online nodes
_NOTE_EVERY = 15.0  # seconds between "still waiting" log lines
_NO_TIMEOUT_TTL = 3600.0  # message TTL when round_timeout is unset (a round then waits for online nodes)


class Coordinator:
    def __init__(self, job: dict, grid, log: Callable[[str], None]):
        self.cfg = cfg = build_config(job["config"], "job")
        self.grid, self.log = grid, log
        self.secure = None  # ServerSecure: public key and a cipher that can only add
        plain = cfg
        if cfg.secure.method != "none":
            # Federation.build would load (or generate) a key holder: the server builds its federation
            # without the secure section and takes only the public key from secure.key_dir
            plain = cfg.model_copy(update={"secure": cfg.secure.model_copy(update={"method": "none"})})
        self.fed = Federation.build(plain)  # the simulation's data, model, Server and Channel
        self.server, self.channel = self.fed.server, self.fed.channel
        self.weight_ref = 0.0
        self.holders: dict[int, bool] = {}  # client id -> whether its last hello said it holds the secret key
        self.declared: dict[int, int] = {}  # client id -> the rows it declared when admitted
        server_secure = None
        if cfg.secure.method != "none":
            self.secure = load_server_side(cfg, self.fed.num_params)
            self.server.cipher = self.secure.cipher
            self.weight_ref = weight_ref(cfg, self.server.aggregator, None)  # a config constant, hashed
            server_secure = SecureServer(
                self.secure.cipher, self.weight_ref, self.secure.payload_bytes, cfg.secure.min_summands
            )
            log(
                f"secure aggregation {cfg.secure.method}: {self.secure.key_bits}-bit public key "
                f"{self.secure.fingerprint} from {cfg.secure.key_dir} (the server holds no secret key)"
            )
            if self.secure.secret_nearby:
                log(
                    f"warning: {cfg.secure.key_dir} also holds paillier_secret.json; the server does not read "
                    "it — keep it on the key-holder client(s) only"
                )
        self.round = Round(cfg, self.server, self.channel, RemoteCohort(self), server_secure)
        self.round.log = log
        if cfg.privacy.enabled and cfg.privacy.reproducible_noise:  # the noise is only as secret as the seed
            log("warning: privacy.reproducible_noise is on: clients know the seed and can redraw the server's noise")
        self.hash = config_hash(cfg)
        self.out = Path(job["out"])
        self.poll = float(job.get("poll", 0.05))
        self.startup_wait = float(job.get("startup_wait", 120.0))
        self.finish_wait = float(job.get("finish_wait", 15.0))
        self.timeout = cfg.runtime.round_timeout
        self.book = NodeBook(external_refusals=job.get("refusals_file"))
        self.admission = Admission.from_job(job, federation_dict(cfg))  # client keys; none with --insecure
        self.rows: list[dict] = []
        self.start_round, self.wall_before, self.resumed_at = 1, 0.0, []
        self.t_start = time.perf_counter()
        self._pending: dict[str, int] = {}  # message id -> node, for train/finish messages
        self._replies: dict[str, Message] = {}
        self._online: set[int] = set()
        self._last_refresh = -1e9
        self.run_dir = RunDir(self.out, cfg.to_dict(), overwrite_metrics=not job.get("resume", False))
        if job.get("resume", False):
            self._resume()

    # --- message pump ---------------------------------------------------------------------------------
    def _message(self, kind: str, node: int, fields: dict, ttl: float, group: str = "") -> Message:
        content = pack(kind, {"config_hash": self.hash, **fields})
        return Message(content, dst_node_id=node, message_type=MESSAGE_TYPES[kind], ttl=ttl, group_id=group)

    def _pump(self) -> None:
        """Pull whatever answers arrived; greet new nodes; forget nodes that went offline."""
        ids = [*self.book.hello_pending, *self._pending]
        if ids:
            for msg in self.grid.pull_messages(ids):
                mid = msg.metadata.reply_to_message_id
                if mid in self.book.hello_pending:
                    self._on_hello(mid, msg)
                elif mid in self._pending:  # asked for once only: the SuperLink drops a delivered message
                    del self._pending[mid]
                    self._replies[mid] = msg
        now = time.monotonic()
        for mid, (_node, sent) in list(self.book.hello_pending.items()):
            if now - sent > _HELLO_TTL:
                del self.book.hello_pending[mid]
        if now - self._last_refresh >= _REFRESH_EVERY:
            self._last_refresh = now
            self._online = {int(n.node_id) for n in self.grid.get_nodes()}
            for c in self.book.forget_offline(self._online):
                self.log(f"client {c} disconnected")
            greet = self.book.to_greet(self._online, now, _REGREET_AFTER)
            if greet:
                fields = {
                    "classes": list(self.fed.data.classes),
                    "key_fingerprint": self.secure.fingerprint if self.secure else "",
                }
                msgs = [self._message("hello", n, fields | self.admission.greeting(n), _HELLO_TTL) for n in greet]
                for n, mid in zip(greet, self.grid.push_messages(msgs)):
                    self.book.hello_sent[n] = now
                    if mid:
                        self.book.hello_pending[mid] = (n, now)

    def _on_hello(self, mid: str, msg: Message) -> None:
        node, _ = self.book.hello_pending.pop(mid)
        cid = None
        if msg.has_error() and msg.error.code == ErrorCode.NODE_UNAVAILABLE:
            self.book.forget_node(node)  # a node that died without saying goodbye: not a refusal
            return
        try:
            if msg.has_error():
                raise ProtocolError(f"error {msg.error.code}: {msg.error.reason}")
            f = unpack("hello", msg.content, reply=True)
            cid = f["client_id"]
            if why := self.admission.check(node, f):  # before anything it says is believed
                raise ProtocolError(why)
            if not f["ok"]:
                raise ProtocolError(f["reason"] + self.admission.config_note(f))
            if f["config_hash"] != self.hash:
                raise ProtocolError(f"config hash {f['config_hash']} differs from the server's {self.hash}")
            if not 0 <= cid < self.cfg.no_models:
                raise ProtocolError(f"client id {cid} is not in 0..{self.cfg.no_models - 1}")
            cap = self.cfg.runtime.max_client_samples
            if not 1 <= f["num_samples"] <= cap:
                raise ProtocolError(f"declares {f['num_samples']} rows: 1..{cap} (runtime.max_client_samples)")
            mine = self.secure.fingerprint if self.secure else ""
            if f["key_fingerprint"] != mine:
                raise ProtocolError(
                    f"public key fingerprint {f['key_fingerprint'] or 'none'} differs from the server's "
                    f"{mine or 'none'} (secure.key_dir must hold the federation's paillier_public.json)"
                )
        except ProtocolError as e:
            self.book.refuse(node, cid, str(e))
            self.log(f"node {node}" + (f" (client {cid})" if cid is not None else "") + f" not admitted: {e}")
            return
        old = self.book.admit(node, cid)
        self.declared[cid] = f["num_samples"]
        named = cid in self.cfg.secure.key_holders  # the config names key holders; a client cannot
        self.holders[cid] = bool(f["key_holder"]) and self.secure is not None and named
        if f["key_holder"] and self.secure is not None and not named:
            self.log(f"client {cid} says it holds the secret key but is not in secure.key_holders: never asked")
        self.log(
            f"client {cid} connected (node {node}; {f['num_samples']} rows, batch {f['batch_size']}, "
            f"{f['cpus']} CPUs, {f['free_mb']:.0f} MB free"
            + ("; key holder" if self.holders[cid] else "")
            + ")"
            + (f", replacing node {old}" if old else "")
        )

    def key_holders(self) -> list[tuple[int, int]]:
        """(client id, node) of the connected key-holder clients, lowest client id first."""
        return sorted((c, n) for c, n in self.book.active().items() if self.holders.get(c))

    # --- one round ------------------------------------------------------------------------------------
    def _wait_for(self, rnd: int, cohort: list[int], first: bool) -> None:
        """Until the whole cohort is connected, or enough of it and waiting longer would not help."""
        start = last_note = time.monotonic()
        limit = self.startup_wait if first else (self.timeout or self.startup_wait)
        need = self.cfg.runtime.min_clients
        while True:
            self._pump()
            active = self.book.active()
            have = [c for c in cohort if c in active]
            waited = time.monotonic() - start
            holder_ok = self.secure is None or bool(self.key_holders())
            if (len(have) == len(cohort) and holder_ok) or (
                len(have) >= need and (waited >= limit or (not first and not self.book.new_node_pending()))
            ):
                return
            if time.monotonic() - last_note > _NOTE_EVERY:
                last_note = time.monotonic()
                missing = [c for c in cohort if c not in active]
                self.log(
                    f"round {rnd}: waiting for clients {missing} (connected: {have}, need {need} to go on)"
                    + ("" if holder_ok else "; no key holder connected yet")
                )
            time.sleep(self.poll)

    def _collect(self, sent: dict[str, int]) -> dict[str, Message]:
        """Answers to ``sent`` (message id -> node) until all are in, the timeout passes or nodes go offline."""
        end = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            self._pump()
            waiting = [m for m in sent if m not in self._replies]
            if not waiting or (end is not None and time.monotonic() >= end):
                break
            if all(sent[m] not in self._online for m in waiting):
                break  # every missing node is offline: waiting longer cannot help
            time.sleep(self.poll)
        for m in sent:
            self._pending.pop(m, None)
        return {m: self._replies.pop(m) for m in sent if m in self._replies}

    def _answer(self, rnd: int, cid: int, msg: Message | None) -> tuple[dict | None, str]:
        """The checked fields of one client's train answer, or why it does not count."""
        if msg is None:
            return None, "no answer within runtime.round_timeout" if self.timeout else "node went offline"
        if msg.has_error():
            return None, f"client error: {msg.error.reason}"
        try:
            f = unpack("train", msg.content, reply=True)
        except ProtocolError as e:
            return None, f"malformed answer: {e}"
        if f["client_id"] != cid or f["round"] != rnd:
            return None, f"answer for client {f['client_id']} round {f['round']}, expected client {cid} round {rnd}"
        return (f, "") if f["ok"] else (None, f["reason"] or "refused")

    # --- the run --------------------------------------------------------------------------------------
    def health(self) -> dict[str, dict]:
        table = self.server.health_table()
        for c, p in self.book.presence.items():
            table.setdefault(str(c), {}).update(
                last_seen=p.last_seen, connects=p.connects, connected=p.connected, node=p.node
            )
        return dict(sorted(table.items(), key=lambda kv: int(kv[0])))

    def _save(self, rnd: int) -> None:
        state = {"round": rnd, "wall_seconds": self._wall(), "resumed_at": self.resumed_at, **self.book.state()}
        write_json(self.out / "flower_state.json", state)
        if self.cfg.runtime.checkpoint:  # the commit point: a resumed server continues after this round
            self.run_dir.write_checkpoint(self.round.state_dict(rnd))

    def _wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t_start

    def _resume(self) -> None:
        path = self.out / "checkpoint.pt"
        if not path.is_file():
            self.log(f"--resume: no checkpoint in {self.out}; starting at round 1")
            self.run_dir.metrics.write_text("", encoding="utf-8")
            return
        last = self.round.load_state_dict(load_checkpoint(path))
        rows = {}
        for line in self.run_dir.metrics.read_text(encoding="utf-8").splitlines():
            if line.strip() and (row := json.loads(line))["round"] <= last:
                rows[row["round"]] = row  # a row written after the checkpoint is dropped: it is redone
        self.rows = [rows[r] for r in sorted(rows)]
        self.run_dir.rewrite_metrics(self.rows)
        state_file = self.out / "flower_state.json"
        if state_file.is_file():
            state = json.loads(state_file.read_text(encoding="utf-8"))
            self.book.load(state)
            self.wall_before = float(state.get("wall_seconds", 0.0))
            self.resumed_at = list(state.get("resumed_at", []))
        self.resumed_at.append(last + 1)
        self.start_round = last + 1
        self.log(f"resuming after round {last} (checkpoint {path})")

    def run(self) -> dict:
        cfg = self.cfg
        for rnd in range(self.start_round, cfg.global_epochs + 1):
            if self.round.privacy is not None and not self.round.privacy.may_run(rnd):
                self.log(f"round {rnd}: stopping: privacy.max_epsilon {cfg.privacy.max_epsilon:g} would be passed")
                break
            row = self.round(rnd)
            self.rows.append(row)
            self.run_dir.append(row)
            self._save(rnd)
            flag = "" if row["applied"] else f" (not applied: {row.get('secure_error') or 'too few answers'})"
            self.log(
                f"round {rnd}/{cfg.global_epochs}: accuracy {row['accuracy']:.4f} loss {row['loss']:.4f} "
                f"clients {row['clients']} {row['seconds']:.2f} s{flag}"
                + (f" failed {row['failed']}" if row["failed"] else "")
            )
        health = self.health()  # as the last round left it: finished clients disconnect next
        self.finish_clients()
        return health

    def finish_clients(self) -> None:
        """Tell every connected client the run is over, and give them a moment to acknowledge."""
        nodes = sorted(self.book.client_of)
        if not nodes:
            return
        msgs = [self._message("finish", n, {"round": self.cfg.global_epochs, "reason": "done"}, 60.0) for n in nodes]
        sent = {mid: n for n, mid in zip(nodes, self.grid.push_messages(msgs)) if mid}
        self._pending.update(sent)
        saved, self.timeout = self.timeout, self.finish_wait
        try:
            acked = self._collect(sent)
        finally:
            self.timeout = saved
        self.log(f"finished: {len(acked)}/{len(sent)} clients acknowledged")
