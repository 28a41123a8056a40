"""The in-process runtime: a config becomes a Federation, and the round loop runs it.

A round, as data (docs/architecture.md):
server.sample(k) → global vector down (bytes counted) → resource checks and simulated dropouts →
engine.train(cohort) → diffs up (bytes counted from the real payloads) → server.aggregate →
server.evaluate → one metrics row → checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import psutil
import torch
from torch import nn

from .aggregators import make_aggregator
from .channel import Channel
from .client import Client
from .config import Config
from .data import FedData, load_data
from .guards import check_memory_limit, divergence, warn
from .models import build_model
from .params import Layout, flatten
from .secure import make_keyholder, make_server_cipher
from .secure.secagg import SecAggState, add_updates, apply_aggregate, decrypt_aggregate, encrypt_update
from .server import Server
from .training import LocalSpec, make_engine

__all__ = ["Federation", "RunResult", "run_federation"]

_DROPOUT_TAG = 4  # stream id of the simulated-failure RNG
_SECURE_TAG = 5  # stream id of the packing's stochastic rounding


@dataclass
class RunResult:
    rows: list[dict]
    summary: dict
    global_vec: torch.Tensor
    health: dict = field(default_factory=dict)


@dataclass
class _ClientsSecure:
    holder: object  # KeyHolder: the secret key stays on the clients' side
    cipher: object  # ClientCipher (public key)
    weight_ref: float


@dataclass
class Federation:
    """Everything a run needs, built from a config: data, model, server, clients, engine."""

    cfg: Config
    data: FedData
    model: nn.Module
    server: Server
    clients: list[Client]
    spec: LocalSpec
    engine: object
    channel: Channel
    secure: object | None = None  # the clients' side of secure aggregation: key holder and cipher

    @classmethod
    def build(cls, cfg: Config, data: FedData | None = None) -> Federation:
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        data = data if data is not None else load_data(cfg)
        model = build_model(cfg.model_name, data.num_features, data.num_classes, cfg.hidden, data.image_shape, cfg.seed)
        server = Server(
            model,
            flatten(model),
            make_aggregator(cfg.lambda_, cfg.aggregator),
            data.x_eval,
            data.y_eval,
            cfg.no_models,
            cfg.k,
            cfg.seed,
        )
        clients = [Client(c, data, cfg.runtime.client_memory_mb) for c in range(cfg.no_models)]
        spec = LocalSpec(cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.momentum)
        channel = Channel(
            cfg.upload_codec, cfg.compression.down, cfg.compression.error_feedback, server.layout, cfg.seed
        )
        secure = None
        if cfg.secure.method != "none" and cfg.secure.protocol == "secagg":
            holder = make_keyholder(cfg.secure, max_summands=cfg.k)
            server.cipher = make_server_cipher(cfg.secure.method, holder.public_bytes())  # public bytes only
            # a client of average size has weight w_ref: scaled updates stay in the range `clip` covers
            w_ref = server.aggregator.weight(max(1, round(float(data.partition.sizes().mean()))))
            secure = _ClientsSecure(holder, holder.client_cipher(), w_ref)
        engine = make_engine(cfg.runtime.engine, cfg.runtime.chunk)
        return cls(cfg, data, model, server, clients, spec, engine, channel, secure)

    @property
    def layout(self) -> Layout:
        return self.server.layout

    @property
    def num_params(self) -> int:
        return self.layout.size

    def run_round(self, round: int) -> dict:
        """One round; returns its metrics row. The global model is unchanged if too few clients answered."""
        cfg, server = self.cfg, self.server
        t0 = time.perf_counter()
        cohort = server.sample(round)
        # Every sampled client is sent the model (one broadcast payload); failures happen after that.
        down, received = self.channel.down(server.global_vec, round)
        dropped = np.random.default_rng([cfg.seed, round, _DROPOUT_TAG]).random(len(cohort)) < cfg.runtime.dropout
        alive, failed = [], {}
        free_mb = psutil.virtual_memory().available / 2**20  # simulated clients share this machine's memory
        for cid, drop in zip(cohort, dropped):
            server.record_picked(cid, round)
            report = self.clients[cid].check_resources(self.num_params, self.spec, free_mb)
            reason = "dropped out (runtime.dropout)" if drop else ("" if report.ok else f"refused: {report.reason}")
            if reason:
                failed[cid] = reason
                server.record_failure(cid, round, reason)
            else:
                alive.append(cid)
        bytes_up, train_loss, extra = 0, float("nan"), {}
        applied = len(alive) >= cfg.runtime.min_clients
        if applied:
            res = self.engine.train(self.model, received, self.data, alive, self.spec, cfg.seed, round)
            if self.secure is None:
                payloads = self.channel.up(res.diffs, alive, round)  # client side
                bytes_up = sum(len(p) for p in payloads)  # the one place upload bytes are measured
                diffs, present = self.channel.decode_up(payloads, alive, round)  # server side: [clients, params]
                server.aggregate(diffs, res.num_samples, present)
            else:
                bytes_up, extra = self._secure_round(round, res)
            for cid in alive:
                server.record_joined(cid, round)
            train_loss = float((res.train_loss * res.num_samples).sum() / res.num_samples.sum())
        acc, loss = server.evaluate()
        return {
            "round": round,
            "accuracy": acc,
            "loss": loss,
            "bytes_up": bytes_up,
            "bytes_down": len(down) * len(cohort),
            "seconds": time.perf_counter() - t0,
            "clients": alive if applied else [],
            "failed": {str(c): r for c, r in failed.items()},
            "applied": applied,
            "train_loss": train_loss,
            **extra,
        }

    def _secure_round(self, round: int, res) -> tuple[int, dict]:
        """Secure aggregation (secure/secagg.py): clients encrypt, server adds, key holder decrypts."""
        sec, server = self.secure, self.server
        state = SecAggState(round, list(res.clients))
        t0 = time.perf_counter()
        for cid, diff, n in zip(res.clients, res.diffs, res.num_samples):
            rng = np.random.default_rng([self.cfg.seed, round, cid, _SECURE_TAG])
            encrypt_update(state, sec.cipher, cid, diff, server.aggregator.weight(int(n)), sec.weight_ref, rng)
        t1 = time.perf_counter()
        aggregate = add_updates(state, server.cipher)
        t2 = time.perf_counter()
        decrypt_aggregate(state, sec.holder, self.num_params)
        t3 = time.perf_counter()
        server.global_vec = apply_aggregate(state, server.aggregator, server.global_vec, sec.weight_ref)
        return sum(len(p) for p in state.payloads.values()), {
            "he_encrypt_seconds": t1 - t0,
            "he_aggregate_seconds": t2 - t1,
            "he_decrypt_seconds": t3 - t2,
            "bytes_keyholder": len(aggregate) + 8 * self.num_params,  # aggregate out, float64 sums back
            "clipped": getattr(sec.cipher, "clipped", 0),
        }


def run_federation(
    fed: Federation,
    on_round: Callable[[dict], None] | None = None,
    start_round: int = 1,
    wall_start: float | None = None,
) -> RunResult:
    """Run rounds ``start_round..global_epochs``; ``on_round`` sees each metrics row as it is made."""
    wall_start = time.perf_counter() if wall_start is None else wall_start
    check_memory_limit(fed.clients, fed.num_params, fed.spec, fed.cfg.runtime.client_memory_mb)
    rows, diverged_at = [], None
    for r in range(start_round, fed.cfg.global_epochs + 1):
        row = fed.run_round(r)
        rows.append(row)
        if on_round is not None:
            on_round(row)
        if why := divergence(fed.server.global_vec, row):  # stop: every later round would be NaN
            diverged_at = r
            warn(f"the run diverged at round {r} ({why}); stopped there, rounds so far are kept (lower lr?)")
            break
    last = rows[-1] if rows else {"accuracy": float("nan"), "loss": float("nan")}
    summary = {
        "final_accuracy": last["accuracy"],
        "final_loss": last["loss"],
        "best_accuracy": max((r["accuracy"] for r in rows), default=float("nan")),
        "rounds": len(rows),
        "rounds_applied": sum(r["applied"] for r in rows),
        "bytes_up": sum(r["bytes_up"] for r in rows),
        "bytes_down": sum(r["bytes_down"] for r in rows),
        "wall_seconds": time.perf_counter() - wall_start,
        "train_seconds": sum(r["seconds"] for r in rows),
        "num_params": fed.num_params,
        "num_clients": fed.cfg.no_models,
        "eval_samples": len(fed.data.y_eval),
        "engine": fed.engine.name,
        "aggregator": fed.server.aggregator.name,
        "compression_up": fed.channel.name,
        "compression_down": fed.channel.down_codec.name,
        "client_failures": sum(len(r["failed"]) for r in rows),
        **_secure_summary(fed, rows),
        "seed": fed.cfg.seed,
        "diverged_at_round": diverged_at,
    }
    return RunResult(rows, summary, fed.server.global_vec.clone(), fed.server.health_table())


def _secure_summary(fed: Federation, rows: list[dict]) -> dict:
    if fed.secure is None:
        return {}
    keys = ("he_encrypt_seconds", "he_aggregate_seconds", "he_decrypt_seconds", "bytes_keyholder")
    out = {k: sum(r.get(k, 0) for r in rows) for k in keys}
    sec = fed.cfg.secure
    out |= {
        "secure_method": sec.method,
        "key_bits": sec.key_bits if sec.method != "ckks" else None,
        "clipped_values": rows[-1].get("clipped", 0) if rows else 0,
    }
    return out
