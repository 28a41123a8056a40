"""The warm side of a deployed client: model, data, codec and error-feedback state held for the whole run.

``fedloom client`` builds one :class:`ClientWorker` at start (torch, the data and the model are loaded once)
and hands it every message Flower delivers; :meth:`ClientWorker.handle` answers with plain fields (see
``protocol.py``). It uses the same core objects as the simulation: :class:`~fedloom.client.Client` trains
(``local_train``, the reference path, seeded by ``(seed, round, client)`` like every engine) and
:class:`~fedloom.channel.Channel` decodes the broadcast and encodes the update, with error feedback when
configured. This module never imports Flower.

Idempotent rounds: a server restarted with ``--resume`` may ask again for a round it had asked before it
crashed. Training is deterministic, and the error-feedback residual is rolled back to what it was before the
first attempt, so a repeated round gives the same payload and nothing is counted twice.

Secure aggregation (``secure.method`` paillier or paillier-per-value; keys from ``secure.key_dir``, see
``secure.py``): the update is encrypted with the secagg stage function (``encrypt_update``) instead of
the codec, its stochastic rounding seeded by ``(seed, round, client)`` as in the simulation, so the
decrypted sums equal the simulation's, and signed with this client's key (``signer``) over
``secure/guard.py``'s message. A key-holder client also answers ``decrypt``, through a
:class:`~fedloom.secure.guard.GuardedKeyHolder`: it verifies each contribution's signature (``verifier``:
the registered public keys), adds the contributions itself and decrypts only a sum of at least
``secure.min_summands`` distinct clients, each round once and in increasing order.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..aggregators import make_aggregator
from ..channel import Channel
from ..client import Client, ResourceReport
from ..config import Config
from ..data import FedData, Partition, load_data
from ..data.datasets import read_csv, standardize
from ..errors import DataError, FedloomError
from ..local_algorithm import LocalAlgorithm
from ..models import build_model
from ..params import Layout, flatten
from ..privacy.mechanism import privatize_update
from ..secure.guard import Contribution, GuardedKeyHolder, KeyHolderRefusal, contribution_message
from ..secure.secagg import SecAggState, encrypt_update
from ..simulation import _SECURE_TAG, weight_ref  # the stream id of the packing's stochastic rounding
from ..training import LocalSpec
from . import identity
from .fingerprint import config_hash, federation_dict
from .secure import load_client_side

__all__ = ["ClientWorker", "ResourceRefusal", "adapt_batch_size"]

_IMAGE_TYPES = ("mnist", "digits")


class ResourceRefusal(FedloomError):
    """This machine cannot hold the training task, even with the smallest batch."""


def adapt_batch_size(client: Client, num_params: int, spec: LocalSpec) -> tuple[LocalSpec, ResourceReport]:
    """Halve the batch size until the resource check passes; the last report says why if it never does."""
    report = client.check_resources(num_params, spec)
    while not report.ok and spec.batch_size > 1:
        spec = dataclasses.replace(spec, batch_size=max(1, spec.batch_size // 2))
        report = client.check_resources(num_params, spec)
    return spec, report


class ClientWorker:
    """One client's state and message handlers (thread-safe: one message at a time)."""

    def __init__(self, cfg: Config, client_id: int, data_file: str | Path | None = None, log: Callable = print):
        if not 0 <= client_id < cfg.no_models:
            raise FedloomError(
                f"--client-id {client_id}: must be in 0..{cfg.no_models - 1} (no_models is {cfg.no_models})"
            )
        if data_file is not None and cfg.type in _IMAGE_TYPES:
            raise FedloomError(f"--data: a local file is supported for tabular data, not for type {cfg.type}")
        self.cfg, self.id, self.log = cfg, client_id, log
        self.hash = config_hash(cfg)
        self.data_file = Path(data_file) if data_file is not None else None
        self.lock = threading.Lock()
        self.accepted = False
        self.refused = ""  # set when the server's config differs: the process exits 2 after answering
        self.key = None  # this client's private key (``--key``): signs its hello
        self.finished = threading.Event()
        self.last_message = time.monotonic()
        self.rounds_trained = 0
        self._ef_round, self._ef_before, self._algo_before = -1, {}, {}
        self.algorithm: LocalAlgorithm | None = None  # the client's side of the algorithm section (_setup)
        self.aggregator = make_aggregator(cfg.lambda_, cfg.aggregator, cfg.algorithm)
        # public key (and the secret key on a key holder) from secure.key_dir; None without secure aggregation
        self.secure = load_client_side(cfg) if cfg.secure.method != "none" else None
        self.registry: identity.Registry | None = None  # a key holder's list of the clients' public keys
        self.weight_ref = weight_ref(cfg, self.aggregator, None) if self.secure is not None else 0.0
        self._guard = None  # the key holder's GuardedKeyHolder, built on the first decrypt request
        if self.data_file is None:
            self._setup(load_data(cfg))
        else:
            self._local = read_csv(str(self.data_file), cfg.data.label if cfg.data else "label")
            # check what we can before connecting; the model is built once the server names the classes
            self._setup(self._local_data([str(c) for c in sorted(set(self._local[1].tolist()))]))

    # --- setup ---------------------------------------------------------------------------------------
    def _setup(self, data: FedData) -> None:
        cfg = self.cfg
        self.data = data
        self.model = build_model(
            cfg.model_name, data.num_features, data.num_classes, cfg.hidden, data.image_shape, cfg.seed
        )
        self.layout = Layout.from_model(self.model)
        self.algorithm = LocalAlgorithm(cfg, self.layout.size, self.layout.num_trainable)
        self.client = Client(self.id, data, cfg.runtime.client_memory_mb)
        self.channel = Channel(
            cfg.upload_codec, cfg.compression.down, cfg.compression.error_feedback, self.layout, cfg.seed
        )
        wanted = LocalSpec(cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.momentum)
        self.spec, self.report = adapt_batch_size(self.client, self.layout.size, wanted)
        if not self.report.ok:
            raise ResourceRefusal(f"client {self.id} refuses the task: {self.report.reason} (even with batch size 1)")
        if self.spec.batch_size != wanted.batch_size:
            self.log(
                f"client {self.id}: batch size lowered from {wanted.batch_size} to {self.spec.batch_size} to fit memory"
            )
        self._warm_up()

    def _warm_up(self) -> None:
        """One throw-away training step now, so that torch's lazy start-up (~1 s) is not paid in round 1."""
        if self.client.num_samples:
            one = dataclasses.replace(self.spec, epochs=1, batch_size=self.client.num_samples)
            self.client.local_train(self.model, flatten(self.model), one, self.cfg.seed, 0)

    def _local_data(self, classes: list[str]) -> FedData:
        """This client's own file as its whole partition, labels numbered as the server's ``classes``."""
        x, raw, _ = self._local
        index = {c: i for i, c in enumerate(classes)}
        labels = raw.tolist()
        if all(v in index for v in labels):
            y = np.array([index[v] for v in labels], dtype=np.int64)
        elif all(v.lstrip("-").isdigit() and 0 <= int(v) < len(classes) for v in labels):
            y = np.array([int(v) for v in labels], dtype=np.int64)  # labels given as class numbers
        else:
            unknown = sorted({v for v in labels if v not in index})[:5]
            raise DataError(f"{self.data_file}: labels {unknown} are not among the federation's classes {classes}")
        (x_std,) = standardize(x)  # local statistics: the rows never leave this machine
        parts = [np.zeros(0, np.int64)] * self.cfg.no_models
        parts[self.id] = np.arange(len(y), dtype=np.int64)
        empty = torch.zeros(0, x.shape[1])
        return FedData(
            "local",
            torch.from_numpy(np.ascontiguousarray(x_std)),
            torch.from_numpy(y),
            empty,
            torch.zeros(0, dtype=torch.int64),
            list(classes),
            Partition.from_lists(parts),
        )

    # --- messages ------------------------------------------------------------------------------------
    def handle(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Answer one request (``protocol.py`` fields in, fields out)."""
        with self.lock:
            self.last_message = time.monotonic()
            handlers = {"hello": self._hello, "train": self._train, "decrypt": self._decrypt, "finish": self._finish}
            return handlers[kind](fields)

    def _base(self) -> dict[str, Any]:
        return {"config_hash": self.hash, "client_id": self.id}

    @property
    def key_holder(self) -> bool:
        return self.secure is not None and self.secure.holder is not None

    @property
    def key_fingerprint(self) -> str:
        return self.secure.fingerprint if self.secure is not None else ""

    def _hello(self, req: dict[str, Any]) -> dict[str, Any]:
        r = self.report
        out = {
            **self._base(),
            "ok": True,
            "reason": "",
            "num_samples": self.client.num_samples,
            "batch_size": self.spec.batch_size,
            "cpus": r.cpus,
            "free_mb": float(r.free_mb),
            "need_mb": float(r.need_mb),
            "key_holder": self.key_holder,
            "key_fingerprint": self.key_fingerprint,
            "federation_json": "",
        }
        claim = identity.hello_statement(req["nonce"], req["node_id"], self.id, self.hash)
        out["signature"] = identity.sign(self.key, claim) if self.key is not None else b""
        if req["config_hash"] != self.hash:  # the server sends no config: it names the fields in its log
            self.refused = (
                f"the server runs a different federation config (hash {req['config_hash']} there, "
                f"{self.hash} here); the server's log names the differing fields"
            )
            out["federation_json"] = json.dumps(federation_dict(self.cfg))
            return {**out, "ok": False, "reason": f"client refuses: {self.refused}"}
        if req["key_fingerprint"] != self.key_fingerprint:
            self.refused = (
                f"the server's public key (fingerprint {req['key_fingerprint'] or 'none'}) differs from this "
                f"client's (fingerprint {self.key_fingerprint or 'none'}, secure.key_dir "
                f"{self.cfg.secure.key_dir}): copy the federation's paillier_public.json from `fedloom keygen`"
            )
            return {**out, "ok": False, "reason": f"client refuses: {self.refused}"}
        if self.data_file is not None and list(self.data.classes) != list(req["classes"]):
            try:
                self._setup(self._local_data(list(req["classes"])))
            except FedloomError as e:
                return {**out, "ok": False, "reason": f"client {self.id}: {e}"}
            out.update(num_samples=self.client.num_samples, batch_size=self.spec.batch_size)
        self.accepted = True
        return out

    def _train(self, req: dict[str, Any]) -> dict[str, Any]:
        rnd = req["round"]
        out = {
            **self._base(),
            "round": rnd,
            "ok": False,
            "reason": "",
            "num_samples": 0,
            "train_loss": float("nan"),
            "train_seconds": 0.0,
            "payload": b"",
            "he_encrypt_seconds": 0.0,
            "clipped": 0,
            "signature": b"",
            "steps": 0,
            "control": b"",
        }
        if req["config_hash"] != self.hash:
            return {**out, "reason": "config hash differs from this client's"}
        if not 1 <= req["epochs"] <= self.cfg.local_epochs:
            return {**out, "reason": f"epochs {req['epochs']} outside 1..{self.cfg.local_epochs} (local_epochs)"}
        report = self.client.check_resources(self.layout.size, self.spec)
        if not report.ok:
            return {**out, "reason": f"refused: {report.reason}"}
        t0 = time.perf_counter()
        try:
            global_vec = self.channel.receive(req["payload"], rnd)
        except Exception as e:  # noqa: BLE001 - a payload from the wire may be malformed in any way
            return {**out, "reason": f"cannot decode the global model: {e}"}
        if global_vec.numel() != self.layout.size:
            return {
                **out,
                "reason": f"global model has {global_vec.numel()} values, this client's model {self.layout.size}",
            }
        if self._ef_round == rnd:  # the same round again (server resumed): undo the first attempt's client state
            self.channel.load_state_dict(self._ef_before)
            self.algorithm.load_state_dict(self._algo_before)
        else:
            self._ef_round, self._ef_before = rnd, self.channel.state_dict()
            self._algo_before = self.algorithm.state_dict()
        try:
            c = self.algorithm.server_control(req["control"])
        except ValueError as e:
            return {**out, "reason": f"cannot use the server's control variate: {e}"}
        correction = self.algorithm.correction([self.id], c)
        spec = self.algorithm.spec(self.spec, req["epochs"])
        update = self.client.local_train(
            self.model, global_vec, spec, self.cfg.seed, rnd, None if correction is None else correction[0]
        )
        update.diff, control = self.algorithm.finish(self.id, update.diff, update.steps, c)
        out.update(steps=update.steps, control=control)
        if self.cfg.privacy.enabled:  # DP-FedAvg's client side; local noise from OS entropy, unknown to the server
            update.diff = privatize_update(self.cfg.privacy, update.diff, self.cfg.seed, rnd, self.id, fresh=True)
        if self.secure is not None:
            try:
                encrypted = self._encrypt(rnd, update)
            except ValueError as e:  # e.g. per-value Paillier refuses a non-finite update
                return {**out, "reason": f"cannot encrypt its update: {e}"}
            return {**out, **encrypted, "train_seconds": time.perf_counter() - t0}
        (payload,) = self.channel.up(update.diff[None], [self.id], rnd)  # [1, params] → one payload
        self.rounds_trained += 1
        return {
            **out,
            "ok": True,
            "num_samples": update.num_samples,
            "train_loss": float(update.metrics["train_loss"]),
            "train_seconds": time.perf_counter() - t0,
            "payload": payload,
        }

    def _encrypt(self, rnd: int, update) -> dict[str, Any]:
        """The ENCRYPT stage of secure/secagg.py: ciphertexts of ``(w_i/w_ref)·diff`` and ``w_i``."""
        cipher = self.secure.cipher
        state = SecAggState(rnd, [self.id])
        rng = np.random.default_rng([self.cfg.seed, rnd, self.id, _SECURE_TAG])
        weight = self.aggregator.weight(int(update.num_samples))
        clipped_before = getattr(cipher, "clipped", 0)
        t0 = time.perf_counter()
        payload = encrypt_update(state, cipher, self.id, update.diff, weight, self.weight_ref, rng)
        seconds = time.perf_counter() - t0
        n = int(update.num_samples)
        message = contribution_message(self.hash, rnd, self.id, n, self.weight_ref, payload)
        signature = identity.sign(self.key, message) if self.key is not None else b""
        self.rounds_trained += 1
        return {
            "ok": True,
            "num_samples": update.num_samples,
            "train_loss": float(update.metrics["train_loss"]),
            "payload": payload,
            "he_encrypt_seconds": seconds,
            "clipped": getattr(cipher, "clipped", 0) - clipped_before,
            "signature": signature,
        }

    def _decrypt(self, req: dict[str, Any]) -> dict[str, Any]:
        """The DECRYPT stage, on a key holder: the sum of a round's signed contributions, checked and added
        here (``secure/guard.py``), never a single client's update."""
        rnd, length = req["round"], req["length"]
        out = {
            **self._base(),
            "round": rnd,
            "ok": False,
            "reason": "",
            "values": b"",
            "weight": 0,
            "decrypt_seconds": 0.0,
        }
        if req["config_hash"] != self.hash:
            return {**out, "reason": "config hash differs from this client's"}
        if not self.key_holder:
            return {**out, "reason": f"client {self.id} does not hold the secret key (no paillier_secret.json)"}
        if length != self.layout.size:
            return {**out, "reason": f"aggregate of {length} values, this federation's model has {self.layout.size}"}
        try:
            contributions = _contributions(req)
            t0 = time.perf_counter()
            result = self.guard().decrypt_round(rnd, contributions, length)
        except KeyHolderRefusal as e:
            self.log(f"refused to decrypt: {e}")
            return {**out, "reason": f"key holder {self.id} refuses: {e}"}
        seconds = time.perf_counter() - t0
        values = np.ascontiguousarray(result.values, dtype="<f8").tobytes()
        self.log(f"round {rnd}: decrypted the sum of {len(contributions)} updates ({seconds:.3f} s)")
        return {**out, "ok": True, "values": values, "weight": int(result.weight), "decrypt_seconds": seconds}

    def guard(self) -> GuardedKeyHolder:
        """This key holder's secret key behind the rules of ``secure/guard.py`` (one per run: it remembers
        the last round it decrypted)."""
        if self.registry is None:
            raise KeyHolderRefusal(
                "no client registry to verify signatures with (clients.json from `fedloom certs DIR --clients N` "
                "in secure.key_dir): a key holder decrypts only what it can verify"
            )
        if self._guard is None:
            from ..secure import make_server_cipher

            holder, cfg = self.secure.holder, self.cfg
            self._guard = GuardedKeyHolder(
                holder,
                make_server_cipher(cfg.secure.method, holder.public_bytes()),
                self.aggregator.weight,
                min_summands=cfg.secure.min_summands,
                payload_bytes=self.secure.payload_bytes(self.layout.size),
                weight_ref=self.weight_ref,
                max_samples=cfg.runtime.max_client_samples,
                config_hash=self.hash,
                verify=self._verify,
            )
        return self._guard

    def _finish(self, req: dict[str, Any]) -> dict[str, Any]:
        self.finished.set()
        return {**self._base(), "ok": True}

    def _verify(self, client: int, message: bytes, signature: bytes) -> bool:
        key = self.registry.keys.get(client)
        return key is not None and identity.verify(key, message, signature)


def _contributions(req: dict[str, Any]) -> list[Contribution]:
    """The decrypt request's parallel lists as contributions (types and lengths checked: it came off the wire)."""
    lists = [req["clients"], req["samples"], req["payloads"], req["signatures"]]
    if len({len(x) for x in lists}) != 1:
        raise KeyHolderRefusal("the decrypt request's lists differ in length")
    ints = all(type(v) is int for v in req["clients"] + req["samples"])
    raw = all(isinstance(v, bytes) for v in req["payloads"] + req["signatures"])
    if not (ints and raw):
        raise KeyHolderRefusal("the decrypt request's lists hold values of the wrong type")
    return [Contribution(c, p, n, s) for c, n, p, s in zip(*lists)]
