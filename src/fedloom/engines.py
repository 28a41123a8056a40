"""Choosing a cohort engine (``runtime.engine``) and keeping BatchNorm local to clients (``runtime.bn``).

Engines train a cohort: ``engine.train(model, global_vec, data, clients, spec, seed, round, starts=None,
correction=None) -> CohortResult``
(:class:`fedloom.training.SequentialEngine` is the reference, :class:`fedloom.engine_vectorized.VectorizedEngine`
the fast one). This module builds one from the config, and wraps it for FedBN.

**FedBN** (Li, Jiang, Zhang, Kamp & Dou, ICLR 2021, "FedBN: Federated Learning on Non-IID Features via Local
Batch Normalization", Algorithm 1): every BatchNorm layer stays local — its running statistics *and* its affine
γ, β. Each client keeps its own BatchNorm state across rounds and trains from the received global model with
that state put back in (a client's first round starts from the received BatchNorm state). Everything else is
averaged as usual. fedloom's diffs still carry the BatchNorm entries (``local − global``), so the server's
global model holds the clients' *averaged* BatchNorm state: the server evaluates that averaged model. FedBN
itself has no global BatchNorm and evaluates each client's local model on the client's own test data; the
server's accuracy under ``bn: fedbn`` is therefore a proxy, not the paper's metric. The default
``bn: fedavg`` averages the BatchNorm state with everything else (as Flower and FLSim average the state dict).
"""

from __future__ import annotations

import torch
from torch import nn

from .engine_vectorized import VectorizedEngine, supports
from .errors import ConfigError
from .params import norm_mask
from .training import CohortResult, SequentialEngine

__all__ = ["make_engine", "AutoEngine", "LocalNorm", "BN_MODES"]

BN_MODES = ("fedavg", "fedbn")


class AutoEngine:
    """``runtime.engine: auto``: the vectorized engine when it :func:`~fedloom.engine_vectorized.supports` the
    model, else the sequential reference. ``name`` tells which one ran last (``auto`` before any training)."""

    def __init__(self, chunk: int | None = None):
        self.vectorized, self.sequential = VectorizedEngine(chunk), SequentialEngine()
        self.name = "auto"

    def train(self, model: nn.Module, *args, **kwargs) -> CohortResult:
        engine = self.vectorized if supports(model) else self.sequential
        self.name = engine.name
        return engine.train(model, *args, **kwargs)


class LocalNorm:
    """FedBN around an engine: each client's BatchNorm entries (affine and statistics) stay with the client."""

    def __init__(self, engine: object):
        self.engine = engine
        self.state: dict[int, torch.Tensor] = {}  # client id → its BatchNorm entries [norm values]
        self._mask: torch.Tensor | None = None  # [params] bool: BatchNorm entries of the flat vector

    @property
    def name(self) -> str:
        return self.engine.name

    def train(
        self,
        model: nn.Module,
        global_vec: torch.Tensor,
        data,
        clients: list[int],
        spec,
        seed: int,
        round: int,
        starts: torch.Tensor | None = None,
        correction: torch.Tensor | None = None,
    ) -> CohortResult:
        """Train from ``starts`` (default: ``global_vec`` for every client) with each client's own BatchNorm
        entries put in; FedProx's term stays anchored at ``global_vec`` and ``correction`` passes through."""
        if self._mask is None:
            self._mask = norm_mask(model)
            if not self._mask.any():
                raise ConfigError(f"runtime.bn: fedbn needs a model with BatchNorm; {type(model).__name__} has none")
        base = global_vec.expand(len(clients), -1) if starts is None else starts
        starts = base.clone()  # [clients, params]; never the caller's tensor
        for i, c in enumerate(clients):
            if c in self.state:
                starts[i, self._mask] = self.state[c]
        res = self.engine.train(
            model, global_vec, data, clients, spec, seed, round, starts=starts, correction=correction
        )
        for i, c in enumerate(clients):
            self.state[c] = (global_vec + res.diffs[i])[self._mask].clone()  # the client's BatchNorm after training
        return res

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Each client's BatchNorm entries keyed by ``str(client_id)`` (copies), for checkpoints."""
        return {str(c): v.clone() for c, v in self.state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {int(c): v.detach().float().clone() for c, v in state.items()}


def make_engine(name: str, chunk: int | None = None, bn: str = "fedavg") -> object:
    """The engine for ``runtime.engine`` (anything with :meth:`SequentialEngine.train`'s signature).

    ``sequential`` or ``vectorized`` force one; ``auto`` trains vectorized whenever the model allows it, else
    sequential. ``chunk`` caps the clients the vectorized engine trains together (default: sized from free
    memory). ``bn: fedbn`` keeps BatchNorm local to each client (:class:`LocalNorm`)."""
    if bn not in BN_MODES:
        raise ConfigError(f"runtime.bn: unknown '{bn}'; known: " + ", ".join(BN_MODES))
    if name == "sequential":
        engine: object = SequentialEngine()
    elif name == "vectorized":
        engine = VectorizedEngine(chunk)
    elif name == "auto":
        engine = AutoEngine(chunk)
    else:
        raise ValueError(f"unknown engine '{name}'; known: auto, vectorized, sequential")
    return LocalNorm(engine) if bn == "fedbn" else engine
