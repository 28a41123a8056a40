"""What travels between the fedloom server and its clients: typed fields in one Flower ConfigRecord.

Every message's content is ``RecordDict({"fedloom": ConfigRecord(fields)})`` whose fields follow the schema
of its kind below; a message that does not match (missing field, wrong type, unknown protocol version) is
rejected with a :class:`ProtocolError` naming the field. Nothing received is ever unpickled: model vectors
and updates travel as the Channel's codec payload ``bytes`` (fedloom/codecs), sample counts and metrics as
plain scalars.

Kinds and Flower message types:

- ``hello`` (``query.hello``): the server introduces its federation by its config hash only (never the
  config itself: no paths of the server travel), the class names, the fingerprint of its public key under
  secure aggregation (else ""), and a fresh ``nonce`` with the ``node_id`` it greets; the client answers with
  its id, its own hash, whether it accepts, its resource report, its public-key fingerprint, whether it holds
  the secret key (``key_holder``), its ``signature`` of (nonce, node id, client id, config hash) with its
  client key (``identity.py``; empty without one) and, when it refuses a different config, its own
  ``federation_json`` (its config minus per-machine fields) so that the server's log can name the fields.
- ``train`` (``train``): round number, the broadcast payload of the global model, the local ``epochs`` this client
  trains this round (fewer than ``local_epochs`` for a straggler keeping partial work) and, under SCAFFOLD, the
  server's control variate ``control`` (float32, else empty). The client answers with its codec payload of
  ``local − global`` (FedNova: divided by its normalization factor) — or, under secure aggregation, the
  ciphertexts of ``(w_i/w_ref)·(local − global)`` and ``w_i`` (``w_ref``: ``secure.weight_ref``, a config
  constant), with ``he_encrypt_seconds``, the count of ``clipped`` values and its ``signature`` over them
  (``secure/guard.py``'s message) — its local ``steps``, its ``control`` change (SCAFFOLD's Δc_i, float32,
  else empty), sample count and training loss, or ``ok=False`` and a reason.
- ``decrypt`` (``query.decrypt``, secure aggregation): a round's contributions — parallel lists of client ids,
  declared sample counts, ciphertexts and signatures — for ``length`` values, sent to one key-holder client;
  it checks them, adds them itself and answers with the decrypted sums (``values``: float64 little-endian,
  ``8·length`` bytes) and the integer sum of the weights, or ``ok=False`` and the rule that refused.
- ``finish`` (``query.finish``): the run is over; the client acknowledges and exits.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, RecordDict

__all__ = ["VERSION", "MESSAGE_TYPES", "ProtocolError", "pack", "unpack", "kind_of"]

VERSION = 5  # 2: secure aggregation; 3: authenticated hello; 4: signed contributions; 5: the algorithm's fields
RECORD = "fedloom"
MESSAGE_TYPES = {"hello": "query.hello", "train": "train", "decrypt": "query.decrypt", "finish": "query.finish"}

_COMMON = {"v": int, "config_hash": str}
_REQUESTS: dict[str, dict[str, type]] = {
    "hello": {**_COMMON, "classes": list, "key_fingerprint": str, "nonce": bytes, "node_id": str},
    "train": {**_COMMON, "round": int, "payload": bytes, "epochs": int, "control": bytes},
    "decrypt": {
        **_COMMON,
        "round": int,
        "length": int,
        "clients": list,
        "samples": list,
        "payloads": list,
        "signatures": list,
    },
    "finish": {**_COMMON, "round": int, "reason": str},
}
_REPLIES: dict[str, dict[str, type]] = {
    "hello": {
        **_COMMON,
        "client_id": int,
        "ok": bool,
        "reason": str,
        "num_samples": int,
        "batch_size": int,
        "cpus": int,
        "free_mb": float,
        "need_mb": float,
        "key_holder": bool,
        "key_fingerprint": str,
        "signature": bytes,
        "federation_json": str,
    },
    "train": {
        **_COMMON,
        "client_id": int,
        "round": int,
        "ok": bool,
        "reason": str,
        "num_samples": int,
        "train_loss": float,
        "train_seconds": float,
        "payload": bytes,
        "he_encrypt_seconds": float,
        "clipped": int,
        "signature": bytes,
        "steps": int,
        "control": bytes,
    },
    "decrypt": {
        **_COMMON,
        "client_id": int,
        "round": int,
        "ok": bool,
        "reason": str,
        "values": bytes,
        "weight": int,
        "decrypt_seconds": float,
    },
    "finish": {**_COMMON, "client_id": int, "ok": bool},
}


class ProtocolError(ValueError):
    """A message whose content does not follow the schema of its kind."""


def _schema(kind: str, reply: bool) -> dict[str, type]:
    table = _REPLIES if reply else _REQUESTS
    if kind not in table:
        raise ProtocolError(f"unknown message kind '{kind}'; known: {', '.join(table)}")
    return table[kind]


def _check(kind: str, reply: bool, fields: dict[str, Any]) -> dict[str, Any]:
    schema = _schema(kind, reply)
    what = f"{kind} {'reply' if reply else 'request'}"
    missing = [k for k in schema if k not in fields]
    if missing:
        raise ProtocolError(f"{what}: missing field(s) {', '.join(missing)}")
    out = {}
    for name, typ in schema.items():
        value = fields[name]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
        if not ok:
            raise ProtocolError(f"{what}: field '{name}' must be {typ.__name__}, got {type(value).__name__}")
        out[name] = list(value) if typ is list else value
    if out["v"] != VERSION:
        raise ProtocolError(f"{what}: protocol version {out['v']}, this fedloom speaks {VERSION}")
    return out


def pack(kind: str, fields: dict[str, Any], reply: bool = False) -> RecordDict:
    """The content of a ``kind`` message (``reply`` for the client's answer); checks the schema."""
    return RecordDict({RECORD: ConfigRecord(_check(kind, reply, {"v": VERSION, **fields}))})


def unpack(kind: str, content: RecordDict, reply: bool = False) -> dict[str, Any]:
    """The checked fields of a received message's content."""
    if RECORD not in content.config_records:
        raise ProtocolError(f"{kind}: no '{RECORD}' config record in the message")
    return _check(kind, reply, dict(content.config_records[RECORD]))


def kind_of(message_type: str) -> str:
    """``query.hello`` → ``hello``."""
    for kind, mtype in MESSAGE_TYPES.items():
        if mtype == message_type:
            return kind
    raise ProtocolError(f"unexpected message type '{message_type}'")
