"""The clients' side of the configured algorithm (``algorithm`` section), the same in both runtimes.

A simulated cohort (:class:`fedloom.simulation.LocalCohort`) and a deployed client
(:class:`fedloom.flower.worker.ClientWorker`) both go through :class:`LocalAlgorithm`:

- **FedProx**: the local spec carries ``mu``; the engines add μ(w − w_global) to every step's gradient.
- **SCAFFOLD** (option II): each client keeps its control variate ``c_i`` across rounds (zeros before its first
  round); it trains with the correction ``c − c_i`` and uploads ``Δc_i`` beside its model update, as float32.
- **FedNova**: the client uploads ``diff / a_i`` (its normalization factor, from its own number of local
  steps), so that the server's step is linear in the sum and works under secure aggregation.
- FedAvg and the FedOpt family change nothing on the clients.

Stragglers (``runtime.stragglers``) are drawn by the round (:func:`straggler_plan`) from ``(seed, round)`` only,
so the same clients straggle whatever the algorithm; each straggler's epochs are drawn in ``1..E−1`` (FedProx's
code: ``np.random.randint(1, E)``), and :func:`~fedloom.algorithm_spec.keeps_partial_work` says whether that
partial work is aggregated or the straggler is dropped.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .algorithm_spec import keeps_partial_work

__all__ = ["LocalAlgorithm", "straggler_plan", "encode_vector", "decode_vector", "USES_STEPS"]

_STRAGGLER_TAG = 6  # stream id of the straggler draw
USES_STEPS = ("fednova", "scaffold")  # algorithms whose server step reads the clients' local step counts


def straggler_plan(cfg, rnd: int, cohort: list[int]) -> tuple[dict[int, int], list[int]]:
    """``(epochs, dropped)`` for round ``rnd``: the local epochs of the stragglers that keep partial work, and
    the stragglers whose work is dropped. ``round(stragglers · |cohort|)`` clients straggle."""
    share = cfg.runtime.stragglers
    if share <= 0 or not cohort:
        return {}, []
    rng = np.random.default_rng([cfg.seed, rnd, _STRAGGLER_TAG])
    count = int(round(share * len(cohort)))
    picked = sorted(int(c) for c in rng.choice(cohort, size=count, replace=False))
    epochs = rng.integers(1, max(2, cfg.local_epochs), size=count)  # 1..E−1, drawn whatever the mode
    if not keeps_partial_work(cfg.algorithm.name, cfg.runtime.straggler_work):
        return {}, picked
    return {c: int(e) for c, e in zip(picked, epochs)}, []


def encode_vector(values: torch.Tensor) -> bytes:
    """A float32 vector as little-endian bytes (SCAFFOLD's control variates on the wire)."""
    return values.detach().to(torch.float32).cpu().numpy().astype("<f4").tobytes()


def decode_vector(data: bytes, length: int, what: str) -> torch.Tensor:
    """``length`` float32 values from ``data``, finite; ValueError naming ``what`` otherwise."""
    if len(data) != 4 * length:
        raise ValueError(f"{what} of {len(data)} bytes, expected {4 * length} (float32 × {length})")
    out = torch.from_numpy(np.frombuffer(data, dtype="<f4").astype(np.float32))
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{what} has non-finite values")
    return out


class LocalAlgorithm:
    """One federation's client side of ``cfg.algorithm`` (module doc); holds SCAFFOLD's ``c_i`` per client."""

    def __init__(self, cfg, size: int, trainable: int | None = None):
        self.name, self.size = cfg.algorithm.name, size
        self.trainable = size if trainable is None else trainable  # values before it are parameters, then buffers
        self.mu = cfg.algorithm.param("mu") if self.name == "fedprox" else 0.0
        self.momentum, self.lr = cfg.momentum, cfg.lr
        self.controls: dict[int, torch.Tensor] = {}  # SCAFFOLD: client id → c_i

    def spec(self, base, epochs: int | None = None):
        """The local spec of a client: FedProx's μ, a straggler's epochs."""
        return dataclasses.replace(base, mu=self.mu, epochs=base.epochs if epochs is None else epochs)

    def server_control(self, task_control: bytes) -> torch.Tensor | None:
        """SCAFFOLD's server control ``c`` from the round's task (None for the other algorithms)."""
        if self.name != "scaffold":
            return None
        return decode_vector(task_control, self.size, "the server's control variate")

    def correction(self, clients: list[int], c: torch.Tensor | None) -> torch.Tensor | None:
        """``[clients, params]`` rows ``c − c_i`` (SCAFFOLD), else None."""
        if c is None:
            return None
        zero = torch.zeros(self.size)
        return torch.stack([c - self.controls.get(cid, zero) for cid in clients])

    @property
    def changes_uploads(self) -> bool:
        """Whether :meth:`finish` changes a client's update or adds control bytes (FedNova, SCAFFOLD)."""
        return self.name in ("fednova", "scaffold")

    def finish(self, cid: int, diff: torch.Tensor, steps: int, c: torch.Tensor | None) -> tuple[torch.Tensor, bytes]:
        """What client ``cid`` uploads after ``steps`` local steps: ``(update, control bytes)``."""
        if self.name == "fednova":
            from .algorithms.fednova import normalize

            return normalize(diff, steps, self.momentum), b""
        if self.name == "scaffold":
            from .algorithms.scaffold import client_control

            old = self.controls.get(cid, torch.zeros(self.size))
            new = client_control(old, c, diff, steps, self.lr)
            new[self.trainable :] = 0  # buffers (BatchNorm statistics) take no gradient, so no control variate
            self.controls[cid] = new
            return diff, encode_vector(new - old)
        return diff, b""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {str(c): v.clone() for c, v in self.controls.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.controls = {int(c): v.detach().float().clone() for c, v in state.items()}
