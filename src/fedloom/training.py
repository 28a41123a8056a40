"""Local training of a cohort of clients: one call trains every sampled client from the global model.

The simulation never loops over clients itself; it hands a cohort to an engine. The sequential engine
below is the readable reference (the book's ch.3 client: SGD with momentum and cross-entropy for
``local_epochs`` passes over the client's shard, ``diff = local − global``); faster engines must give the
same numbers for the same seed.

Randomness: client ``c`` in round ``r`` shuffles its rows, epoch after epoch, with one
``torch.Generator`` seeded from ``(seed, r, c)`` (:func:`client_seed`), so the batch order does not
depend on which engine runs or which other clients share the cohort.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import FedData
from .params import flatten, load_into

__all__ = ["LocalSpec", "CohortResult", "SequentialEngine", "client_seed", "train_one", "make_engine"]

_SHUFFLE_TAG = 2  # stream id of the batch-order RNG


@dataclass(frozen=True)
class LocalSpec:
    """Hyper-parameters of one client's local training (the book's keys)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0


@dataclass
class CohortResult:
    clients: list[int]
    diffs: torch.Tensor  # [clients, params] local − global
    num_samples: torch.Tensor  # [clients] int64
    train_loss: torch.Tensor  # [clients] mean cross-entropy over every sample of every local step


def client_seed(seed: int, round: int, client: int, tag: int = _SHUFFLE_TAG) -> int:
    """A 63-bit seed for one (run, round, client, purpose); independent streams for different tags."""
    return int(np.random.SeedSequence([seed, round, client, tag]).generate_state(1, np.uint64)[0] >> 1)


def train_one(
    model: nn.Module, global_vec: torch.Tensor, x: torch.Tensor, y: torch.Tensor, spec: LocalSpec, seed: int
) -> tuple[torch.Tensor, float]:
    """Train ``model`` (overwritten with ``global_vec``) on ``x, y``; return ``(diff [params], mean loss)``."""
    load_into(model, global_vec)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum)
    gen = torch.Generator().manual_seed(seed)
    n = len(y)
    total = 0.0
    for _ in range(spec.epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, spec.batch_size):
            idx = perm[start : start + spec.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
    return flatten(model) - global_vec, total / max(1, n * spec.epochs)


class SequentialEngine:
    """Reference engine: the cohort's clients one after another, each with its own torch.optim.SGD."""

    name = "sequential"

    def train(
        self,
        model: nn.Module,
        global_vec: torch.Tensor,
        data: FedData,
        clients: list[int],
        spec: LocalSpec,
        seed: int,
        round: int,
    ) -> CohortResult:
        work = copy.deepcopy(model)  # one scratch model for the whole cohort, not one per client
        diffs, sizes, losses = [], [], []
        for c in clients:
            idx = data.client_indices(c)
            diff, loss = train_one(
                work, global_vec, data.x_train[idx], data.y_train[idx], spec, client_seed(seed, round, c)
            )
            diffs.append(diff)
            sizes.append(len(idx))
            losses.append(loss)
        return CohortResult(
            clients=list(clients),
            diffs=torch.stack(diffs) if diffs else torch.zeros(0, global_vec.numel()),  # [clients, params]
            num_samples=torch.tensor(sizes, dtype=torch.int64),
            train_loss=torch.tensor(losses, dtype=torch.float32),
        )


def make_engine(name: str, chunk: int | None = None) -> object:
    """The engine for ``runtime.engine`` (anything with :meth:`SequentialEngine.train`'s signature).

    ``sequential`` or ``vectorized`` force one; ``auto`` trains vectorized whenever the model allows it
    (:func:`fedloom.engine_vectorized.supports`), else sequential. ``chunk`` caps the clients the vectorized
    engine trains together (default: sized from free memory)."""
    if name == "sequential":
        return SequentialEngine()
    from .engine_vectorized import AutoEngine, VectorizedEngine  # late: that module builds on this one

    if name == "vectorized":
        return VectorizedEngine(chunk)
    if name == "auto":
        return AutoEngine(chunk)
    raise ValueError(f"unknown engine '{name}'; known: auto, vectorized, sequential")
