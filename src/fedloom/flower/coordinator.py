"""The deployed round loop: the simulation's round, with real clients behind Flower messages.

Round ``r`` (compare ``Federation.run_round``): ``server.sample(r)`` → wait until the cohort is connected (or
enough of it) → ``channel.down`` → one ``train`` message per connected client → answers until all are in,
``runtime.round_timeout`` passes or the missing clients' nodes go offline → ``channel.decode_up`` of the
payload bytes (the one place upload bytes are counted) → ``server.aggregate`` when at least
``runtime.min_clients`` answered → ``server.evaluate`` → metrics row → checkpoint. The Server, Channel,
aggregator and codecs are the simulation's own objects, built by ``Federation.build`` from the same config.

Polling: Flower's ``Grid.send_and_receive`` sleeps 3 s between pulls; this loop pulls every ``poll`` seconds
(0.05 by default) with the Grid's ``push_messages``/``pull_messages`` and meanwhile greets nodes that join.

Secure aggregation (compare ``Federation._secure_round``; the stages of ``secure/secagg.py``): the server
loads only the public key (``secure.py``; ``Federation.build`` is given the config without its secure
section, so no key holder is ever built in this process) → ENCRYPT runs on the clients (train answers carry
ciphertexts) → ADD here (``add_updates`` with the ServerCipher) → DECRYPT by one connected key-holder client
(``decrypt_aggregate`` with :class:`RemoteKeyHolder`, which sends a ``decrypt`` message and waits up to
``runtime.round_timeout``) → APPLY here (``apply_aggregate``). No key holder connected, or none answering,
means the round is not applied and its row's ``secure_error`` says why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Message
from flwr.common.constant import ErrorCode

from ..config import build_config
from ..runs import RunDir, load_checkpoint, write_json
from ..secure.base import Decrypted, KeyHolder
from ..secure.secagg import SecAggState, add_updates, apply_aggregate, decrypt_aggregate
from ..simulation import Federation
from .fingerprint import config_hash, federation_dict
from .nodes import Admission, NodeBook
from .protocol import MESSAGE_TYPES, ProtocolError, pack, unpack
from .secure import MIN_SUMMANDS, load_server_side

__all__ = ["Coordinator", "RemoteKeyHolder", "KeyHolderUnavailable"]

_HELLO_TTL = 30.0  # seconds a greeting may wait unanswered before it is dropped (and may be sent again)
_REGREET_AFTER = 20.0  # a suspect node is greeted again after this many seconds
_REFRESH_EVERY = 0.5  # seconds between looks at the list of online nodes
_NOTE_EVERY = 15.0  # seconds between "still waiting" log lines
_NO_TIMEOUT_TTL = 3600.0  # message TTL when round_timeout is unset (a round then waits for online nodes)


class KeyHolderUnavailable(Exception):
    """No key-holder client decrypted this round's aggregate (the message says why)."""


class RemoteKeyHolder(KeyHolder):
    """The DECRYPT stage's key holder as the server sees it: key-holder clients reached by ``decrypt``
    messages. It holds no key: :meth:`decrypt` sends the aggregate to the connected key holders in turn
    (lowest client id first) until one answers with valid sums, each within ``runtime.round_timeout``."""

    name = "remote"

    def __init__(self, coord: Coordinator, rnd: int):
        self.coord, self.rnd = coord, rnd
        self.stats: dict = {"keyholder": None, "he_decrypt_seconds": 0.0, "keyholder_seconds": 0.0}
        self.stats["bytes_keyholder"] = 0

    def public_bytes(self) -> bytes:
        return self.coord.secure.public

    def client_cipher(self):
        raise NotImplementedError("the server encrypts nothing")

    def decrypt(self, payload: bytes, num_summands: int, length: int) -> Decrypted:
        coord = self.coord
        holders = coord.key_holders()
        if not holders:
            raise KeyHolderUnavailable(
                "no key holder connected (a client whose secure.key_dir holds paillier_secret.json)"
            )
        fields = {"round": self.rnd, "aggregate": payload, "num_summands": num_summands, "length": length}
        ttl = (coord.timeout or _NO_TIMEOUT_TTL) + 30.0
        reasons = []
        for cid, node in holders:
            t0 = time.perf_counter()
            (mid,) = coord.grid.push_messages([coord._message("decrypt", node, fields, ttl, str(self.rnd))])
            if not mid:
                reasons.append(f"client {cid}: the SuperLink did not take the message")
                continue
            coord._pending[mid] = node
            self.stats["bytes_keyholder"] += len(payload)
            msg = coord._collect({mid: node}).get(mid)
            self.stats["keyholder_seconds"] += time.perf_counter() - t0
            try:
                f = self._check(cid, msg, length)
            except KeyHolderUnavailable as e:
                if msg is None:
                    coord.book.suspect(node)
                reasons.append(f"key holder {cid}: {e}")
                coord.log(f"round {self.rnd}: key holder {cid} did not decrypt: {e}")
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
        self._clipped = 0
        if cfg.secure.method != "none":
            self.secure = load_server_side(cfg, self.fed.num_params)
            self.server.cipher = self.secure.cipher
            # as Federation.build: a client of average size has weight w_ref (the simulation's constant)
            sizes = self.fed.data.partition.sizes()
            self.weight_ref = float(self.server.aggregator.weight(max(1, round(float(sizes.mean())))))
            log(
                f"secure aggregation {cfg.secure.method}: {self.secure.key_bits}-bit public key "
                f"{self.secure.fingerprint} from {cfg.secure.key_dir} (the server holds no secret key)"
            )
            if self.secure.secret_nearby:
                log(
                    f"warning: {cfg.secure.key_dir} also holds paillier_secret.json; the server does not read "
                    "it — keep it on the key-holder client(s) only"
                )
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

    def _decode(self, payloads: list[bytes], alive: list[int], rnd: int):
        """``channel.decode_up``; a payload that does not decode is dropped with its client."""
        try:
            return self.channel.decode_up(payloads, alive, rnd), {}
        except Exception:  # noqa: BLE001 - find the malformed payload(s), then decode the rest
            bad = {}
            for p, c in zip(payloads, alive):
                try:
                    self.channel.decode_up([p], [c], rnd)
                except Exception as e:  # noqa: BLE001
                    bad[c] = f"payload does not decode: {e}"
            keep = [i for i, c in enumerate(alive) if c not in bad]
            if not keep:
                return None, bad
            return self.channel.decode_up([payloads[i] for i in keep], [alive[i] for i in keep], rnd), bad

    def run_round(self, rnd: int) -> dict:
        server, need = self.server, self.cfg.runtime.min_clients
        t0 = time.perf_counter()
        cohort = server.sample(rnd)
        self._wait_for(rnd, cohort, first=rnd == self.start_round)
        t_send = time.perf_counter()
        down, _ = self.channel.down(server.global_vec, rnd)
        active = self.book.active()
        failed = {c: "not connected" for c in cohort if c not in active}
        targets = [c for c in cohort if c in active]
        ttl = (self.timeout or _NO_TIMEOUT_TTL) + 30.0
        fields = {"round": rnd, "payload": down, "weight_ref": self.weight_ref}
        msgs = [self._message("train", active[c], fields, ttl, str(rnd)) for c in targets]
        sent: dict[str, int] = {}
        for c, mid in zip(targets, self.grid.push_messages(msgs) if msgs else []):
            if mid:
                sent[mid] = active[c]
                self._pending[mid] = active[c]
            else:
                failed[c] = "the SuperLink did not take the message"
        by_node = {n: c for c, n in active.items()}
        replies = self._collect(sent)
        t_back = time.perf_counter()
        alive, payloads, sizes, losses, client_secs, he_secs, clipped = [], [], [], [], [], [], []
        for mid, node in sent.items():
            cid = by_node[node]
            f, reason = self._answer(rnd, cid, replies.get(mid))
            if f is None:
                failed[cid] = reason
                if mid not in replies:
                    self.book.suspect(node)
                continue
            self.book.seen(cid)
            alive.append(cid)
            payloads.append(f["payload"])
            sizes.append(f["num_samples"])
            losses.append(f["train_loss"])
            client_secs.append(f["train_seconds"])
            he_secs.append(f["he_encrypt_seconds"])
            clipped.append(f["clipped"])
        bytes_up, train_loss, extra = 0, float("nan"), {}
        applied = len(alive) >= need
        if self.secure is not None:
            self._clipped += sum(clipped)
            extra = {"he_encrypt_seconds": sum(he_secs), "he_aggregate_seconds": 0.0, "he_decrypt_seconds": 0.0}
            extra |= {"bytes_keyholder": 0, "keyholder": None, "keyholder_seconds": 0.0, "clipped": self._clipped}
            extra["secure_error"] = "" if applied else "too few answers"
        if applied:
            bytes_up = sum(len(p) for p in payloads)  # the one place upload bytes are measured
            if self.secure is None:
                decoded, bad = self._decode(payloads, alive, rnd)
            else:
                decoded, bad = None, self._check_ciphertexts(payloads, alive)
            failed.update(bad)
            keep = [i for i, c in enumerate(alive) if c not in bad]
            alive, sizes, losses = [alive[i] for i in keep], [sizes[i] for i in keep], [losses[i] for i in keep]
            payloads = [payloads[i] for i in keep]
            applied = (decoded is not None or self.secure is not None) and len(alive) >= need
            if applied and self.secure is None:
                diffs, present = decoded  # [clients, params]
                server.aggregate(diffs, torch.tensor(sizes, dtype=torch.int64), present)
            elif self.secure is not None:
                if applied:
                    applied, more = self._secure_aggregate(rnd, alive, payloads)
                    extra.update(more)
                else:
                    extra["secure_error"] = "too few valid encrypted updates"
            if applied:
                for c in alive:
                    server.record_joined(c, rnd)
                n = torch.tensor(sizes, dtype=torch.float64)
                train_loss = float((torch.tensor(losses, dtype=torch.float64) * n).sum() / n.sum())
        for c in cohort:
            server.record_picked(c, rnd)
        for c, reason in failed.items():
            server.record_failure(c, rnd, reason)
        acc, loss = server.evaluate()
        return {
            "round": rnd,
            "accuracy": acc,
            "loss": loss,
            "bytes_up": bytes_up,
            "bytes_down": len(down) * len(sent),
            "seconds": time.perf_counter() - t0,
            "clients": alive if applied else [],
            "failed": {str(c): r for c, r in sorted(failed.items())},
            "applied": applied,
            "train_loss": train_loss,
            "wait_seconds": t_send - t0,
            "exchange_seconds": t_back - t_send,
            "client_seconds": max(client_secs, default=0.0),
            **extra,
        }

    def _check_ciphertexts(self, payloads: list[bytes], alive: list[int]) -> dict[int, str]:
        """Clients whose encrypted update does not have this federation's size (its layout and key)."""
        want = self.secure.payload_bytes
        return {
            c: f"encrypted update of {len(p)} bytes, expected {want} ({self.secure.ciphertexts} ciphertexts)"
            for c, p in zip(alive, payloads)
            if len(p) != want
        }

    def _secure_aggregate(self, rnd: int, alive: list[int], payloads: list[bytes]) -> tuple[bool, dict]:
        """ADD, DECRYPT (by a key-holder client), APPLY: whether the round was applied, and its row fields."""
        server = self.server
        state = SecAggState(rnd, list(alive))
        state.payloads = dict(zip(alive, payloads))  # the ENCRYPT stage ran on the clients
        out: dict = {}
        t0 = time.perf_counter()
        try:
            add_updates(state, self.secure.cipher)
        except ValueError as e:  # a ciphertext out of range: a client used another key, or bytes were damaged
            return False, {"secure_error": f"cannot add the encrypted updates: {e}"}
        out["he_aggregate_seconds"] = time.perf_counter() - t0
        if len(state.payloads) < MIN_SUMMANDS:
            reason = f"{len(state.payloads)} encrypted update(s): decrypting fewer than {MIN_SUMMANDS} would reveal one"
            self.log(f"round {rnd}: not applied: {reason}")
            return False, {**out, "secure_error": reason}
        holder = RemoteKeyHolder(self, rnd)
        try:
            decrypt_aggregate(state, holder, self.fed.num_params)
        except KeyHolderUnavailable as e:
            self.log(f"round {rnd}: not applied: {e}")
            return False, {**out, **holder.stats, "secure_error": str(e)}
        server.global_vec = apply_aggregate(state, server.aggregator, server.global_vec, self.weight_ref)
        return True, {**out, **holder.stats}

    def secure_summary(self) -> dict:
        """The simulation's secure fields of ``summary.json`` (sums over rows), or {} without secure aggregation."""
        if self.secure is None:
            return {}
        keys = ("he_encrypt_seconds", "he_aggregate_seconds", "he_decrypt_seconds", "bytes_keyholder")
        out = {k: sum(r.get(k, 0) for r in self.rows) for k in keys}
        return out | {
            "secure_method": self.cfg.secure.method,
            "key_bits": self.secure.key_bits,
            "key_fingerprint": self.secure.fingerprint,
            "clipped_values": self.rows[-1].get("clipped", 0) if self.rows else 0,
        }

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
            self.run_dir.checkpoint(rnd, self.server.global_vec, self.server.health_table())

    def _wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t_start

    def _resume(self) -> None:
        path = self.out / "checkpoint.pt"
        if not path.is_file():
            self.log(f"--resume: no checkpoint in {self.out}; starting at round 1")
            self.run_dir.metrics.write_text("", encoding="utf-8")
            return
        ck = load_checkpoint(path)
        last = int(ck["round"])
        self.server.global_vec = ck["global"].clone()
        self.server.load_health(json.loads(ck["health"]))
        rows = {}
        for line in self.run_dir.metrics.read_text(encoding="utf-8").splitlines():
            if line.strip() and (row := json.loads(line))["round"] <= last:
                rows[row["round"]] = row  # a row written after the checkpoint is dropped: it is redone
        self.rows = [rows[r] for r in sorted(rows)]
        tmp = self.run_dir.metrics.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")
        tmp.replace(self.run_dir.metrics)
        state_file = self.out / "flower_state.json"
        if state_file.is_file():
            state = json.loads(state_file.read_text(encoding="utf-8"))
            self.book.load(state)
            self.wall_before = float(state.get("wall_seconds", 0.0))
            self.resumed_at = list(state.get("resumed_at", []))
        self.resumed_at.append(last + 1)
        self.start_round = last + 1
        self._clipped = int(self.rows[-1].get("clipped", 0)) if self.rows else 0
        self.log(f"resuming after round {last} (checkpoint {path})")

    def run(self) -> dict:
        cfg = self.cfg
        for rnd in range(self.start_round, cfg.global_epochs + 1):
            row = self.run_round(rnd)
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
