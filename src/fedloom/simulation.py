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
import torch
from torch import nn

from .aggregators import make_aggregator
from .client import Client
from .config import Config
from .data import FedData, load_data
from .models import build_model
from .params import Layout, flatten
from .server import Server
from .training import LocalSpec, make_engine
from .wire import pack_vector, unpack_vector

__all__ = ["Federation", "RunResult", "run_federation"]

_DROPOUT_TAG = 4  # stream id of the simulated-failure RNG


@dataclass
class RunResult:
    rows: list[dict]
    summary: dict
    global_vec: torch.Tensor
    health: dict = field(default_factory=dict)


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

    @classmethod
    def build(cls, cfg: Config, data: FedData | None = None) -> Federation:
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        data = data if data is not None else load_data(cfg)
        model = build_model(cfg.model_name, data.num_features, data.num_classes, cfg.hidden, data.image_shape, cfg.seed)
        server = Server(
            model, flatten(model), make_aggregator(cfg.lambda_), data.x_eval, data.y_eval,
            cfg.no_models, cfg.k, cfg.seed,
        )  # fmt: skip
        clients = [Client(c, data, cfg.runtime.client_memory_mb) for c in range(cfg.no_models)]
        spec = LocalSpec(cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.momentum)
        return cls(cfg, data, model, server, clients, spec, make_engine(cfg.runtime.engine))

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
        down = pack_vector(server.global_vec, "global", round=round)
        # Every sampled client is sent the model; what it does with it is its own business.
        received = unpack_vector(down)[0]
        dropped = np.random.default_rng([cfg.seed, round, _DROPOUT_TAG]).random(len(cohort)) < cfg.runtime.dropout
        alive, failed = [], {}
        for cid, drop in zip(cohort, dropped):
            server.record_picked(cid, round)
            report = self.clients[cid].check_resources(self.num_params, self.spec)
            reason = "dropped out (runtime.dropout)" if drop else ("" if report.ok else f"refused: {report.reason}")
            if reason:
                failed[cid] = reason
                server.record_failure(cid, round, reason)
            else:
                alive.append(cid)
        bytes_up, train_loss = 0, float("nan")
        applied = len(alive) >= cfg.runtime.min_clients
        if applied:
            res = self.engine.train(self.model, received, self.data, alive, self.spec, cfg.seed, round)
            payloads = [pack_vector(d, "update", client=c, round=round) for c, d in zip(alive, res.diffs)]
            bytes_up = sum(len(p) for p in payloads)
            diffs = torch.stack([unpack_vector(p)[0] for p in payloads])  # [clients, params] as received
            server.aggregate(diffs, res.num_samples)
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
        }


def run_federation(
    fed: Federation,
    on_round: Callable[[dict], None] | None = None,
    start_round: int = 1,
    wall_start: float | None = None,
) -> RunResult:
    """Run rounds ``start_round..global_epochs``; ``on_round`` sees each metrics row as it is made."""
    wall_start = time.perf_counter() if wall_start is None else wall_start
    rows = []
    for r in range(start_round, fed.cfg.global_epochs + 1):
        row = fed.run_round(r)
        rows.append(row)
        if on_round is not None:
            on_round(row)
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
        "client_failures": sum(len(r["failed"]) for r in rows),
        "seed": fed.cfg.seed,
    }
    return RunResult(rows, summary, fed.server.global_vec.clone(), fed.server.health_table())
