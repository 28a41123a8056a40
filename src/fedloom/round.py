"""One federated round, written once for both runtimes.

    sample → broadcast payload → the cohort's answers → check → decode → (secure stages) → aggregate →
    evaluate → metrics row

The simulation and the Flower runtime differ only in how a cohort's answers are obtained, behind
:class:`Cohort`: in process (``simulation.LocalCohort``: the vectorized or sequential engine, the clients'
codecs and ciphers) or as messages to remote workers with timeouts (``flower.coordinator.RemoteCohort``).
Everything the cohort returns is treated as hostile here, whatever the runtime: a client id outside the
cohort, a sample count outside ``1..declared``, a payload that does not decode, a non-finite value or an
update whose L2 norm passes ``runtime.max_update_norm`` makes that client fail the round, with the reason;
the round goes on with the others. Secure aggregation runs its stages here too (``secure/secagg.py``):
the cohort's answers carry ciphertexts, the server checks their size and adds them, the cohort's key holder
decrypts, the server applies.

Checkpoints: :meth:`Round.state_dict` is the server's side of what lives across rounds (global vector,
client health, the clipped-value count); a runtime adds its own (the simulation its clients' codec state).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .channel import Channel
from .local_algorithm import USES_STEPS, decode_vector, encode_vector, straggler_plan
from .secure.guard import Contribution, KeyHolderRefusal
from .secure.secagg import SecAggState, add_updates, apply_aggregate, decrypt_aggregate
from .server import Server

__all__ = ["Answer", "Task", "Replies", "Cohort", "SecureServer", "Round", "check_update", "check_updates"]


@dataclass
class Answer:
    """One client's answer as it arrived; nothing in it is trusted until :class:`Round` has checked it."""

    client: int
    payload: bytes  # the upload codec's payload, or ciphertexts under secure aggregation
    num_samples: int
    train_loss: float
    stats: dict[str, float] = field(default_factory=dict)  # train_seconds, he_encrypt_seconds, clipped
    signature: bytes = b""  # secure aggregation over Flower: the client's signature of its ciphertexts
    steps: int = 0  # local SGD steps taken (FedNova's and SCAFFOLD's server steps read it)
    control: bytes = b""  # SCAFFOLD: the client's control-variate change Δc_i, float32


@dataclass
class Task:
    """What the round asks of its cohort besides the broadcast model: each straggler's local epochs (a client
    not named trains the configured ``local_epochs``) and SCAFFOLD's server control variate (float32 bytes)."""

    epochs: dict[int, int] = field(default_factory=dict)
    control: bytes = b""


@dataclass
class Replies:
    """What a cohort returns: answers, the clients that failed (with the reason) and how many were sent the
    broadcast payload (``bytes_down = len(payload) × sent``); ``row`` carries runtime-only timings."""

    answers: list[Answer]
    failed: dict[int, str]
    sent: int
    row: dict = field(default_factory=dict)


class Cohort(Protocol):
    """How a runtime gets answers from the sampled clients."""

    def train(self, rnd: int, clients: list[int], down: bytes, task: Task) -> Replies:
        """Send the broadcast payload ``down`` and the ``task`` to ``clients``; their answers and failures."""

    def declared_samples(self, client: int) -> int:
        """The rows ``client`` declared when it was admitted (its answers may claim no more)."""

    def key_holder(self, rnd: int):
        """Who decrypts round ``rnd``'s sum: anything with ``decrypt_round(rnd, contributions, length)``, i.e.
        a :class:`~fedloom.secure.guard.GuardedKeyHolder` or the Flower runtime's messenger to one."""


@dataclass
class SecureServer:
    """The server's secure-aggregation material: a cipher that can only add, and public constants."""

    cipher: object  # ServerCipher
    weight_ref: float  # w_ref of secure/secagg.py
    payload_bytes: int | None  # the exact size of one client's ciphertexts (None: the scheme varies it)
    min_summands: int  # fewest updates an aggregate may hold before it is decrypted


def check_update(values: torch.Tensor, max_norm: float) -> str:
    """Why a decoded update ``[params]`` may not touch the model ("" when it may)."""
    return check_updates(values.reshape(1, -1), max_norm)[0]


def check_updates(values: torch.Tensor, max_norm: float) -> list[str]:
    """:func:`check_update` of every row of ``values`` ``[clients, params]``, in one pass when all are fine."""
    norms = torch.linalg.vector_norm(values.double(), dim=1).tolist()  # [clients]
    out = []
    for i, norm in enumerate(norms):
        if not math.isfinite(norm) and not bool(torch.isfinite(values[i]).all()):
            out.append("update has non-finite values (NaN or Inf)")
        elif norm > max_norm:
            out.append(f"update norm {norm:.4g} exceeds runtime.max_update_norm {max_norm:g}")
        else:
            out.append("")
    return out


class Round:
    """The round of one federation; call it with a round number to run that round and get its row."""

    def __init__(self, cfg, server: Server, channel: Channel, cohort: Cohort, secure: SecureServer | None = None):
        self.cfg, self.server, self.channel, self.cohort, self.secure = cfg, server, channel, cohort, secure
        self.clipped = 0  # values clipped by the clients' packing so far (secure aggregation)
        self.log = None  # optional callable(str) for lines worth a log (the Flower server's)
        # more numbers for each row, computed after evaluation (e.g. a backdoor's success, a privacy budget):
        # callables (round, row so far) -> dict of extra fields
        self.extras: list = []
        self.privacy = None  # DP-FedAvg's server step and accountant (privacy/stage.py) when privacy.clip is set
        if cfg.privacy.enabled:
            from .privacy.stage import Privacy

            self.privacy = Privacy(cfg, server)
            self.extras.append(self.privacy.row)

    # --- the round --------------------------------------------------------------------------------
    def __call__(self, rnd: int) -> dict:
        server, t0 = self.server, time.perf_counter()
        cohort = server.sample(rnd)
        down = self.channel.broadcast(server.global_vec, rnd)
        epochs, dropped = straggler_plan(self.cfg, rnd, cohort)
        task = Task(epochs, self._control_down())
        replies = self.cohort.train(rnd, [c for c in cohort if c not in dropped], down, task)
        failed = dict(replies.failed) | {c: _DROPPED_STRAGGLER for c in dropped}
        answers = self._admissible(replies.answers, cohort, failed)
        self.clipped += int(sum(a.stats.get("clipped", 0) for a in answers))
        # the one place transferred bytes are measured (a dropped straggler received the model too)
        bytes_up = sum(len(a.payload) + len(a.control) for a in answers)
        bytes_down = (len(down) + len(task.control)) * (replies.sent + len(dropped))
        extra: dict = {}
        if self.secure is None:
            kept = self._plain(rnd, answers, failed)
        else:
            kept, extra = self._secure(rnd, answers, failed)
        applied = kept is not None
        for c in cohort:
            server.record_picked(c, rnd)
        for c, reason in failed.items():
            server.record_failure(c, rnd, reason)
        for a in kept or []:
            server.record_joined(a.client, rnd)
        acc, loss = server.evaluate()
        row = {
            "round": rnd,
            "accuracy": acc,
            "loss": loss,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "seconds": time.perf_counter() - t0,
            "clients": [a.client for a in kept or []],
            "failed": {str(c): r for c, r in sorted(failed.items())},
            "applied": applied,
            "train_loss": _mean_loss(kept or []),
            **replies.row,
            **extra,
        }
        for more in self.extras:
            row |= more(rnd, row)
        return row

    def _admissible(self, answers: list[Answer], cohort: list[int], failed: dict[int, str]) -> list[Answer]:
        """Answers from this round's cohort, one per client, with a sample count in ``1..declared``."""
        out, seen, asked = [], set(), set(cohort)
        for a in answers:
            if a.client not in asked or a.client in seen:
                continue  # not asked, or answered twice: nobody to blame but the transport
            seen.add(a.client)
            declared = self.cohort.declared_samples(a.client)
            most = self.cfg.local_epochs * declared  # batch size 1 over every declared row, every epoch
            if not 1 <= a.num_samples <= declared:
                failed[a.client] = f"num_samples {a.num_samples} outside 1..{declared} (its declared rows)"
            elif self.uses_steps and not 1 <= a.steps <= most:
                failed[a.client] = f"steps {a.steps} outside 1..{most} (local_epochs × its declared rows)"
            elif self.secure is not None and self.secure.payload_bytes not in (None, len(a.payload)):
                failed[a.client] = f"encrypted update of {len(a.payload)} bytes, expected {self.secure.payload_bytes}"
            else:
                out.append(a)
        return out

    def _enough(self, rnd: int, kept: list[Answer], why: str = "too few answers") -> bool:
        need = self.cfg.runtime.min_clients
        if len(kept) >= need:
            return True
        if self.log is not None:
            self.log(f"round {rnd}: not applied: {why} ({len(kept)}, need runtime.min_clients {need})")
        return False

    def _decode(
        self, rnd: int, answers: list[Answer], failed: dict[int, str]
    ) -> tuple[list[Answer], torch.Tensor, torch.Tensor | None]:
        """The answers that decode to an update of the layout's size, their values ``[decoded, params]`` and
        which entries each one sent (``[decoded, params]`` bool, or None: all); the others fail with the reason.
        The cohort is decoded in one call when it can be, else each payload alone, so that a bad one fails
        only its sender."""
        size = self.channel.layout.size
        if len(answers) > 1:
            try:
                values, present = self.channel.decode_up([a.payload for a in answers], [a.client for a in answers], rnd)
            except Exception:  # noqa: BLE001 - one of them is malformed: find it below
                values = None
            if values is not None and values.shape == (len(answers), size):
                return list(answers), values, present
        ok, rows, masks = [], [], []
        for a in answers:
            try:
                (v,), p = self.channel.decode_up([a.payload], [a.client], rnd)  # [1, params]
            except Exception as e:  # noqa: BLE001 - a payload from the wire may be malformed in any way
                failed[a.client] = f"payload does not decode: {e}"
                continue
            if v.numel() != size:
                failed[a.client] = f"update of {v.numel()} values, expected {size}"
                continue
            ok.append(a)
            rows.append(v)
            masks.append(None if p is None else p[0])
        values = torch.stack(rows) if rows else torch.zeros(0, size)
        if all(m is None for m in masks):
            return ok, values, None
        full = torch.ones(size, dtype=torch.bool)
        return ok, values, torch.stack([full if m is None else m for m in masks])

    def _plain(self, rnd: int, answers: list[Answer], failed: dict[int, str]) -> list[Answer] | None:
        """Decode and check each update, then aggregate the good ones; None when the round is not applied."""
        decoded, diffs, mask = self._decode(rnd, answers, failed)  # [clients, params] values and present
        keep, controls = [], []
        for i, (a, reason) in enumerate(zip(decoded, check_updates(diffs, self.cfg.runtime.max_update_norm))):
            if reason:
                failed[a.client] = reason
                continue
            if self.algorithm == "scaffold":
                try:
                    controls.append(self._control_up(a))
                except ValueError as e:
                    failed[a.client] = str(e)
                    continue
            keep.append(i)
        kept = [decoded[i] for i in keep]
        if len(keep) < len(decoded):
            idx = torch.tensor(keep, dtype=torch.int64)
            diffs, mask = diffs[idx], None if mask is None else mask[idx]
        if self.privacy is None and not self._enough(rnd, kept):
            return None  # with privacy every round releases its noised sum, however few answered
        if self.privacy is not None:
            self.server.global_vec = self.privacy.sum.step(rnd, self.server.global_vec, diffs, mask)
            return kept
        sizes = torch.tensor([a.num_samples for a in kept], dtype=torch.int64)
        self._begin(kept)
        self.server.aggregate(diffs, sizes, mask)
        if controls:  # SCAFFOLD's server control: c ← c + (1/N)·Σ Δc_i
            self.server.aggregator.update_control(torch.stack(controls), self.cfg.no_models)
        return kept

    def _secure(self, rnd: int, answers: list[Answer], failed: dict[int, str]) -> tuple[list[Answer] | None, dict]:
        """ADD (here), DECRYPT (the cohort's key holder), APPLY (here)."""
        sec, server = self.secure, self.server
        extra = {
            "he_encrypt_seconds": sum(a.stats.get("he_encrypt_seconds", 0.0) for a in answers),
            "he_aggregate_seconds": 0.0,
            "he_decrypt_seconds": 0.0,
            "bytes_keyholder": 0,
            "clipped": self.clipped,
            "secure_error": "",
        }
        t0 = time.perf_counter()
        kept, state = self._add(rnd, answers, failed)
        extra["he_aggregate_seconds"] = time.perf_counter() - t0
        need = max(sec.min_summands, 1)
        if len(kept) < need:
            extra["secure_error"] = f"{len(kept)} encrypted update(s): fewer than secure.min_summands {need}"
            return None, extra
        if not self._enough(rnd, kept, "too few valid encrypted updates"):
            extra["secure_error"] = "too few answers"
            return None, extra
        holder = self.cohort.key_holder(rnd)
        contributions = [Contribution(a.client, a.payload, a.num_samples, a.signature) for a in kept]
        t1 = time.perf_counter()
        try:
            decrypt_aggregate(state, holder, self.channel.layout.size, contributions)
        except (KeyHolderError, KeyHolderRefusal) as e:
            extra |= getattr(holder, "stats", {})
            extra["secure_error"] = str(e)
            if self.log is not None:
                self.log(f"round {rnd}: not applied: {e}")
            return None, extra
        extra["he_decrypt_seconds"] = time.perf_counter() - t1
        # the contributions go to the key holder (it adds them itself); float64 sums come back
        extra["bytes_keyholder"] = sum(len(a.payload) for a in kept) + 8 * self.channel.layout.size
        extra |= getattr(holder, "stats", {})
        expected = sum(server.aggregator.weight(a.num_samples) for a in kept)
        if int(state.result.weight) != int(round(expected)):
            extra["secure_error"] = (
                f"the decrypted total weight {state.result.weight} differs from the {expected:g} the clients declared"
            )
            return None, extra
        self._begin(kept)
        server.global_vec = apply_aggregate(state, server.aggregator, server.global_vec, sec.weight_ref)
        return kept, extra

    def _add(self, rnd: int, answers: list[Answer], failed: dict[int, str]) -> tuple[list[Answer], SecAggState]:
        """The ADD stage over the answers whose ciphertexts the server cipher accepts (in range of the
        federation's key, one layout). The whole cohort is tried first; if that fails, each payload alone
        finds the bad ones, which fail their senders only, and the rest are added."""
        try:
            return list(answers), self._added(rnd, answers)
        except (ValueError, TypeError):
            pass
        kept = []
        for a in answers:
            try:
                self.secure.cipher.add([a.payload])
                kept.append(a)
            except (ValueError, TypeError) as e:
                failed[a.client] = f"encrypted update is not valid under the federation's public key: {e}"
        return kept, self._added(rnd, kept)

    def _added(self, rnd: int, answers: list[Answer]) -> SecAggState:
        state = SecAggState(rnd, [a.client for a in answers])
        state.payloads = {a.client: a.payload for a in answers}  # the ENCRYPT stage ran on the clients
        if answers:
            add_updates(state, self.secure.cipher)
        return state

    # --- the algorithm's extras (algorithm section) ---------------------------------------------------
    @property
    def algorithm(self) -> str:
        return self.cfg.algorithm.name

    @property
    def uses_steps(self) -> bool:
        return self.algorithm in USES_STEPS

    def _control_down(self) -> bytes:
        """SCAFFOLD's server control variate ``c`` for this round's task (b"" for the other algorithms)."""
        agg = self.server.aggregator
        return encode_vector(agg.control(self.channel.layout.size)) if self.algorithm == "scaffold" else b""

    def _control_up(self, a: Answer) -> torch.Tensor:
        """A client's Δc_i, checked as an update is (size, finiteness, norm)."""
        size = self.channel.layout.size
        delta = decode_vector(a.control, size, "control-variate change")
        reason = check_update(delta, self.cfg.runtime.max_update_norm)
        if reason:
            raise ValueError(f"control-variate change: {reason}")
        return delta

    def _begin(self, kept: list[Answer]) -> None:
        """FedNova: the round's effective step count τ_eff comes from the clients' reported local steps."""
        agg = self.server.aggregator
        if self.algorithm == "fednova":
            from .algorithms.fednova import norm_factor

            weights = [agg.weight(a.num_samples) for a in kept]
            agg.begin_round(weights, [norm_factor(a.steps, self.cfg.momentum) for a in kept])

    # --- state across rounds ----------------------------------------------------------------------
    def state_dict(self, rnd: int) -> dict:
        """The server side of a checkpoint after round ``rnd`` (tensors and plain values only)."""
        agg = self.server.aggregator
        return {
            "round": rnd,
            "global": self.server.global_vec.clone(),
            "health": json.dumps(self.server.health_table()),
            "clipped": self.clipped,
            # a server step with state across rounds (a server optimizer's moments) checkpoints it here
            "aggregator": agg.state_dict() if hasattr(agg, "state_dict") else {},
            **({"dp_clip": self.privacy.sum.clip} if self.privacy is not None else {}),  # adaptive clipping's C
        }

    def load_state_dict(self, state: dict) -> int:
        """Restore :meth:`state_dict`'s fields; returns the round they were taken after."""
        self.server.global_vec = state["global"].clone()
        self.server.load_health(json.loads(state["health"]))
        self.clipped = int(state.get("clipped", 0))
        if hasattr(self.server.aggregator, "load_state_dict"):
            self.server.aggregator.load_state_dict(state.get("aggregator", {}))
        if self.privacy is not None and "dp_clip" in state:
            self.privacy.sum.clip = float(state["dp_clip"])
        return int(state["round"])


_DROPPED_STRAGGLER = "straggler: its partial work is dropped (runtime.stragglers)"


class KeyHolderError(Exception):
    """The DECRYPT stage failed: no key holder answered, or it refused (the message says why)."""


def _mean_loss(kept: list[Answer]) -> float:
    n = sum(a.num_samples for a in kept)
    if not n:
        return math.nan
    return float(sum(a.train_loss * a.num_samples for a in kept) / n)
