"""The in-process runtime: a config becomes a Federation, whose clients answer the one round in process.

The round itself (sample → broadcast → answers → check → decode → secure stages → aggregate → evaluate →
row) is :class:`fedloom.round.Round`, shared with the Flower runtime. This module supplies its cohort:
:class:`LocalCohort` runs the clients' side in this process — decode the broadcast, resource checks and
simulated dropouts, ``engine.train`` of the whole cohort at once, then each client's upload codec (with its
error-feedback residual) or its encryption — and hands the round the same :class:`~fedloom.round.Answer`
records a remote client would send.
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
from .attacks import Attack, make_attack
from .channel import Channel
from .client import Client, usable_cpus
from .config import Config
from .data import FedData, load_data
from .device import resolve_device
from .engines import make_engine
from .guards import check_memory_limit, divergence, warn
from .local_algorithm import LocalAlgorithm
from .models import build_model
from .params import Layout, flatten
from .privacy.mechanism import privatize_update
from .privacy.stage import summary as privacy_summary
from .round import Answer, Replies, Round, SecureServer, Task
from .secure import make_keyholder, make_server_cipher
from .secure.guard import GuardedKeyHolder
from .secure.secagg import SecAggState, encrypt_update
from .server import Server
from .threads import threads_summary, tune_threads
from .training import CohortResult, LocalSpec

__all__ = ["Federation", "LocalCohort", "RunResult", "run_federation"]

_DROPOUT_TAG = 4  # stream id of the simulated-failure RNG
_SECURE_TAG = 5  # stream id of the packing's stochastic rounding
_FREE_SECONDS = 0.25  # the machine's free memory is read again after this long (a read costs ~25 µs)
_FREE_READ = [-1e9, 0.0]  # (monotonic time of the last read, MB available then)


def _free_mb() -> float:
    """Memory available on this machine, in MB, read at most every ``_FREE_SECONDS``."""
    now = time.monotonic()
    if now - _FREE_READ[0] > _FREE_SECONDS:
        _FREE_READ[:] = [now, psutil.virtual_memory().available / 2**20]
    return _FREE_READ[1]


@dataclass
class RunResult:
    rows: list[dict]
    summary: dict
    global_vec: torch.Tensor
    health: dict = field(default_factory=dict)


@dataclass
class _ClientsSecure:
    holder: object  # GuardedKeyHolder: the secret key stays on the clients' side, behind secure/guard.py's rules
    cipher: object  # ClientCipher (public key)
    weight_ref: float


class LocalCohort:
    """The clients of a simulated federation, answering a round in this process (see the module doc)."""

    def __init__(self, fed: Federation):
        self.fed = fed

    def declared_samples(self, client: int) -> int:
        return self.fed.clients[client].num_samples

    def key_holder(self, rnd: int):
        return self.fed.secure.holder

    def train(self, rnd: int, clients: list[int], down: bytes, task: Task) -> Replies:
        fed, cfg = self.fed, self.fed.cfg
        received = fed.channel.receive(down, rnd)  # every client decodes the same broadcast
        dropped = (  # a fresh generator costs ~20 µs: none without dropout
            np.random.default_rng([cfg.seed, rnd, _DROPOUT_TAG]).random(len(clients)) < cfg.runtime.dropout
            if cfg.runtime.dropout
            else np.zeros(len(clients), dtype=bool)
        )
        alive, failed = [], {}
        free_mb, cpus = _free_mb(), usable_cpus()  # simulated clients share this machine
        for cid, drop in zip(clients, dropped):
            report = fed.clients[cid].check_resources(fed.num_params, fed.spec, free_mb, cpus)
            reason = "dropped out (runtime.dropout)" if drop else ("" if report.ok else f"refused: {report.reason}")
            if reason:
                failed[cid] = reason
            else:
                alive.append(cid)
        if not alive:
            return Replies([], failed, len(clients))
        res, steps, controls = self._train_alive(rnd, received, alive, task)
        if fed.secure is None:
            payloads = fed.channel.up(res.diffs, alive, rnd)  # each client's codec (and error feedback)
            numbers = zip(alive, payloads, res.num_samples.tolist(), res.train_loss.tolist(), steps, controls)
            answers = [Answer(c, p, int(n), float(loss), steps=s, control=b) for c, p, n, loss, s, b in numbers]
            return Replies(answers, failed, len(clients))
        answers = []
        for c, d, n, loss, s in zip(alive, res.diffs, res.num_samples, res.train_loss, steps):
            stats: dict = {}
            try:
                payload = self._encrypt(rnd, c, d, int(n), stats)
                answers.append(Answer(c, payload, int(n), float(loss), stats, steps=s))
            except ValueError as e:  # e.g. per-value Paillier refuses a non-finite update
                failed[c] = f"cannot encrypt its update: {e}"
        return Replies(answers, failed, len(clients))

    def _train_alive(self, rnd: int, received: torch.Tensor, alive: list[int], task: Task):
        """Local training of the clients that answer, then their side of the algorithm: ``(CohortResult,
        steps, control bytes)`` in ``alive``'s order. Stragglers with partial work train their own epochs
        (one engine call per epoch count); the batch order of a client does not depend on its group."""
        fed, cfg, algo = self.fed, self.fed.cfg, self.fed.algorithm
        c = algo.server_control(task.control)
        groups: dict[int, list[int]] = {}
        for cid in alive:
            groups.setdefault(task.epochs.get(cid, cfg.local_epochs), []).append(cid)
        parts = []
        for epochs, members in groups.items():
            spec = algo.spec(fed.spec, epochs)
            corr = algo.correction(members, c)
            parts.append(fed.engine.train(fed.model, received, fed.data, members, spec, cfg.seed, rnd, correction=corr))
        res = merge_results(parts, alive)
        if cfg.privacy.enabled:  # DP-FedAvg's client side, before the upload codec (privacy/mechanism.py)
            rows = [privatize_update(cfg.privacy, d, cfg.seed, rnd, c) for c, d in zip(alive, res.diffs)]
            res.diffs = torch.stack(rows)
        steps = [int(s) for s in res.steps.tolist()]
        controls = [b""] * len(alive)
        if algo.changes_uploads:
            outs = [algo.finish(cid, d, s, c) for cid, d, s in zip(alive, res.diffs, steps)]
            res.diffs, controls = torch.stack([d for d, _ in outs]), [b for _, b in outs]
        if fed.attack is not None:  # simulated attackers replace their updates here, before the upload (attacks/)
            spec = algo.spec(fed.spec)
            res = fed.attack.apply(
                rnd, res, lambda d, cl: fed.engine.train(fed.model, received, d, cl, spec, cfg.seed, rnd)
            )
        return res, steps, controls

    def _encrypt(self, rnd: int, cid: int, diff: torch.Tensor, n: int, stats: dict) -> bytes:
        """The ENCRYPT stage on client ``cid``: ciphertexts of ``(w_i/w_ref)·diff`` and ``w_i``."""
        sec, agg = self.fed.secure, self.fed.server.aggregator
        rng = np.random.default_rng([self.fed.cfg.seed, rnd, cid, _SECURE_TAG])
        before, t0 = getattr(sec.cipher, "clipped", 0), time.perf_counter()
        payload = encrypt_update(SecAggState(rnd, [cid]), sec.cipher, cid, diff, agg.weight(n), sec.weight_ref, rng)
        stats.update(he_encrypt_seconds=time.perf_counter() - t0, clipped=getattr(sec.cipher, "clipped", 0) - before)
        return payload

    def state_dict(self) -> dict:
        """The clients' state that lives across rounds: error-feedback residuals, FedBN's local BatchNorm."""
        engine = self.fed.engine
        local = engine.state_dict() if hasattr(engine, "state_dict") else {}
        return {"channel": self.fed.channel.state_dict(), "engine": local, "algorithm": self.fed.algorithm.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.fed.channel.load_state_dict(state.get("channel", {}))
        self.fed.algorithm.load_state_dict(state.get("algorithm", {}))
        if hasattr(self.fed.engine, "load_state_dict"):
            self.fed.engine.load_state_dict(state.get("engine", {}))


@dataclass
class Federation:
    """Everything a run needs, built from a config: data, model, server, clients, engine, and its round."""

    cfg: Config
    data: FedData
    model: nn.Module
    server: Server
    clients: list[Client]
    spec: LocalSpec
    engine: object
    channel: Channel
    secure: object | None = None  # the clients' side of secure aggregation: key holder and cipher
    round: Round | None = None
    cohort: LocalCohort | None = None
    attack: Attack | None = None  # simulated attackers (fedloom.attacks)
    algorithm: LocalAlgorithm | None = None  # the clients' side of the algorithm section (SCAFFOLD's c_i)

    @classmethod
    def build(cls, cfg: Config, data: FedData | None = None) -> Federation:
        device = resolve_device(cfg.runtime.device)  # a missing GPU is refused before the data loads
        data = data if data is not None else load_data(cfg)
        model = build_model(cfg.model_name, data.num_features, data.num_classes, cfg.hidden, data.image_shape, cfg.seed)
        server = Server(
            model,
            flatten(model),
            make_aggregator(cfg.lambda_, cfg.aggregator, cfg.algorithm),
            data.x_eval,
            data.y_eval,
            cfg.no_models,
            cfg.k,
            cfg.seed,
        )
        server.sampling = cfg.runtime.sampling
        clients = [Client(c, data, cfg.runtime.client_memory_mb) for c in range(cfg.no_models)]
        spec = LocalSpec(cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.momentum)
        channel = Channel(
            cfg.upload_codec, cfg.compression.down, cfg.compression.error_feedback, server.layout, cfg.seed
        )
        secure, server_secure = None, None
        if cfg.secure.method != "none" and cfg.secure.protocol == "secagg":
            holder = make_keyholder(cfg.secure, max_summands=cfg.k)
            server.cipher = make_server_cipher(cfg.secure.method, holder.public_bytes())  # public bytes only
            w_ref = weight_ref(cfg, server.aggregator, data)
            guarded = GuardedKeyHolder(
                holder,
                make_server_cipher(cfg.secure.method, holder.public_bytes()),  # the key holder's own adder
                server.aggregator.weight,
                min_summands=cfg.secure.min_summands,
                payload_bytes=None,
                weight_ref=w_ref,
                max_samples=int(data.partition.sizes().max()),
            )  # in process: no signatures (nothing travels), every other rule as on a deployed key holder
            secure = _ClientsSecure(guarded, holder.client_cipher(), w_ref)
            server_secure = SecureServer(server.cipher, w_ref, None, cfg.secure.min_summands)
        engine = tune_threads(
            make_engine(cfg.runtime.engine, cfg.runtime.chunk, cfg.runtime.bn), cfg.runtime.threads, device, server,
            cfg.global_epochs,
        )  # fmt: skip
        fed = cls(cfg, data, model, server, clients, spec, engine, channel, secure)
        fed.algorithm = LocalAlgorithm(cfg, server.layout.size, server.layout.num_trainable)
        fed.cohort = LocalCohort(fed)
        fed.round = Round(cfg, server, channel, fed.cohort, server_secure)
        fed.attack = make_attack(cfg, data, server)
        if fed.attack is not None:
            fed.round.extras.append(fed.attack.row)
        return fed

    @property
    def layout(self) -> Layout:
        return self.server.layout

    @property
    def num_params(self) -> int:
        return self.layout.size

    def run_round(self, round: int) -> dict:
        """One round (:class:`fedloom.round.Round`); returns its metrics row."""
        return self.round(round)

    def state_dict(self, round: int) -> dict:
        """A checkpoint after ``round``: the server's state and the simulated clients' (for ``--resume``)."""
        return {**self.round.state_dict(round), "clients": self.cohort.state_dict()}

    def load_state_dict(self, state: dict) -> int:
        """Restore a :meth:`state_dict`; returns the round it was taken after."""
        self.cohort.load_state_dict(state.get("clients", {}))
        return self.round.load_state_dict(state)


def merge_results(parts: list[CohortResult], order: list[int]) -> CohortResult:
    """One cohort result from several engine calls (stragglers' groups), rows in ``order``'s client order."""
    if len(parts) == 1 and parts[0].clients == order:
        return parts[0]
    where = {c: (p, i) for p in parts for i, c in enumerate(p.clients)}
    rows = [where[c] for c in order]
    return CohortResult(
        clients=list(order),
        diffs=torch.stack([p.diffs[i] for p, i in rows]),  # [clients, params]
        num_samples=torch.stack([p.num_samples[i] for p, i in rows]),
        train_loss=torch.stack([p.train_loss[i] for p, i in rows]),
        steps=torch.stack([p.steps[i] for p, i in rows]),
    )


def weight_ref(cfg: Config, aggregator, data: FedData | None) -> float:
    """``w_ref`` of secure/secagg.py (it cancels in the result): ``secure.weight_ref`` when set; else the weight
    of a client of average size, so that scaled updates stay in the range the packing's ``clip`` covers."""
    if cfg.secure.weight_ref is not None:
        return float(cfg.secure.weight_ref)
    if aggregator.weight(1) == aggregator.weight(2):  # a constant weight (the book's λ rule: 1)
        return float(aggregator.weight(1))
    if data is None:
        raise ValueError("secure.weight_ref is needed: set it to about the average client's sample count")
    return float(aggregator.weight(max(1, round(float(data.partition.sizes().mean())))))


def run_federation(
    fed: Federation,
    on_round: Callable[[dict], None] | None = None,
    start_round: int = 1,
    wall_start: float | None = None,
    rows: list[dict] | None = None,
) -> RunResult:
    """Run rounds ``start_round..global_epochs``; ``on_round`` sees each metrics row as it is made.
    ``rows``: the rows of rounds before ``start_round`` (a resumed run), counted in the summary."""
    wall_start = time.perf_counter() if wall_start is None else wall_start
    check_memory_limit(fed.clients, fed.num_params, fed.spec, fed.cfg.runtime.client_memory_mb)
    rows, diverged_at = list(rows or []), None
    for r in range(start_round, fed.cfg.global_epochs + 1):
        if fed.round.privacy is not None and not fed.round.privacy.may_run(r):
            break  # privacy.max_epsilon: this round could pass it
        row = fed.run_round(r)
        rows.append(row)
        if on_round is not None:
            on_round(row)
        if why := divergence(fed.server.global_vec, row):  # stop: every later round would be NaN
            diverged_at = r
            warn(f"the run diverged at round {r} ({why}); stopped there, rounds so far are kept (lower lr?)")
            break
    summary = summarize(fed, rows, time.perf_counter() - wall_start) | {"diverged_at_round": diverged_at}
    return RunResult(rows, summary, fed.server.global_vec.clone(), fed.server.health_table())


def summarize(fed: Federation, rows: list[dict], wall_seconds: float, cfg: Config | None = None) -> dict:
    """``summary.json``'s fields from a run's rows (both runtimes; ``cfg``: the run's config when ``fed`` was
    built from another, as the Flower server's is, without its secure section)."""
    cfg = cfg or fed.cfg
    last = rows[-1] if rows else {"accuracy": float("nan"), "loss": float("nan")}
    return {
        "final_accuracy": last["accuracy"],
        "final_loss": last["loss"],
        "best_accuracy": max((r["accuracy"] for r in rows), default=float("nan")),
        "rounds": len(rows),
        "rounds_applied": sum(bool(r["applied"]) for r in rows),
        "bytes_up": sum(r["bytes_up"] for r in rows),
        "bytes_down": sum(r["bytes_down"] for r in rows),
        "wall_seconds": wall_seconds,
        "train_seconds": sum(r["seconds"] for r in rows),
        "num_params": fed.num_params,
        "num_clients": cfg.no_models,
        "eval_samples": len(fed.data.y_eval),
        "engine": fed.engine.name,
        **threads_summary(fed.engine),
        "aggregator": fed.server.aggregator.name,
        "algorithm": cfg.algorithm.label(),
        "compression_up": fed.channel.name,
        "compression_down": fed.channel.down_codec.name,
        "client_failures": sum(len(r["failed"]) for r in rows),
        **_secure_summary(cfg, rows),
        **privacy_summary(cfg, rows),
        "seed": cfg.seed,
    }


def _secure_summary(cfg: Config, rows: list[dict]) -> dict:
    sec = cfg.secure
    if sec.method == "none" or sec.protocol != "secagg":
        return {}
    keys = ("he_encrypt_seconds", "he_aggregate_seconds", "he_decrypt_seconds", "bytes_keyholder")
    out = {k: sum(r.get(k, 0) for r in rows) for k in keys}
    return out | {
        "secure_method": sec.method,
        "key_bits": sec.key_bits if sec.method != "ckks" else None,
        "clipped_values": rows[-1].get("clipped", 0) if rows else 0,
    }


def resume_from(fed: Federation, point) -> tuple[int, list[dict]]:
    """Load a ``--resume`` point (:class:`fedloom.runs.ResumePoint`: the checkpoint and the metrics rows up to
    its round, read and checked once by ``prepare_run_dir``) into ``fed``, server and simulated clients;
    returns (the next round, those rows). A row written after the checkpoint was dropped: its round is run
    again and ends where it ended the first time."""
    from .errors import FedloomError

    try:
        last = fed.load_state_dict(point.checkpoint)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: say which
        raise FedloomError(f"--resume: checkpoint.pt is not a checkpoint of this federation ({e})") from None
    return last + 1, list(point.rows)
