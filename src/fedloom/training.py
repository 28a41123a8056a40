"""Local training of a cohort of clients: one call trains every sampled client from the global model.

The simulation never loops over clients itself; it hands a cohort to an engine. The sequential engine
below is the readable reference (the book's ch.3 client: SGD with momentum and cross-entropy for
``local_epochs`` passes over the client's shard, ``diff = local − global``); faster engines must give the
same numbers for the same seed.

Randomness: client ``c`` in round ``r`` shuffles its rows, epoch after epoch, with one
``torch.Generator`` seeded from ``(seed, r, c)`` (:func:`client_seed`), so the batch order does not
depend on which engine runs or which other clients share the cohort.

Model state: a client starts from the whole received state, BatchNorm running statistics included
(:func:`fedloom.params.load_into`), so the scratch model shared by a cohort carries nothing from one
client to the next; its diff covers the statistics too. Training-mode BatchNorm cannot normalize a batch
of one row (PyTorch raises), so with BatchNorm a trailing one-row batch of an epoch is skipped, as
``DataLoader(drop_last=True)`` would skip it; ``batch_size: 1`` is refused.

Local terms of federated optimizers, added to the gradient of the *parameters* (buffers have none) at every
local step, before SGD's momentum (the perturbed gradient is the one the optimizer sees, as in FedProx's code):

- **FedProx** (Li, Sahu, Zaheer, Sanjabi, Talwalkar & Smith, MLSys 2020, eq. 2): the client minimizes
  ``h(w) = F(w) + μ/2·‖w − w_t‖²`` with ``w_t`` the received global model (``global_vec``, even when a client
  starts elsewhere, as FedBN's clients do), so each step's gradient gains ``μ·(w − w_t)``; ``LocalSpec.mu`` is μ.
  The reported train loss stays the cross-entropy F, without the proximal term.
- **SCAFFOLD** (Karimireddy, Kale, Mohri, Reddi, Stich & Suresh, ICML 2020, Algorithm 1 line 10):
  ``y ← y − η·(g(y) + c − c_i)``; the caller passes ``correction = c − c_i`` over the flat layout.

A client's **steps** are its SGD steps: ``epochs · ⌈n/B⌉``, less the skipped one-row BatchNorm batches.

Engines are built by :func:`fedloom.engines.make_engine`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import FedData
from .errors import ConfigError
from .params import flatten, load_into

__all__ = [
    "LocalSpec",
    "CohortResult",
    "SequentialEngine",
    "client_seed",
    "train_one",
    "has_batchnorm",
    "check_local",
    "check_correction",
]

_SHUFFLE_TAG = 2  # stream id of the batch-order RNG


@dataclass(frozen=True)
class LocalSpec:
    """Hyper-parameters of one client's local training (the book's keys, and FedProx's μ)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    mu: float = 0.0  # FedProx's proximal weight μ (module docstring); 0: plain local SGD


@dataclass
class CohortResult:
    clients: list[int]
    diffs: torch.Tensor  # [clients, params] local − global
    num_samples: torch.Tensor  # [clients] int64
    train_loss: torch.Tensor  # [clients] mean cross-entropy over every sample of every local step
    steps: torch.Tensor  # [clients] int64 SGD steps each client took


def client_seed(seed: int, round: int, client: int, tag: int = _SHUFFLE_TAG) -> int:
    """A 63-bit seed for one (run, round, client, purpose); independent streams for different tags."""
    return int(np.random.SeedSequence([seed, round, client, tag]).generate_state(1, np.uint64)[0] >> 1)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` normalizes with batch statistics in training mode (a one-row batch is undefined)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_local(model: nn.Module, spec: LocalSpec) -> None:
    """Refuse settings the model cannot train with (one line, ConfigError)."""
    if spec.batch_size == 1 and has_batchnorm(model):
        raise ConfigError("batch_size 1 cannot train a model with BatchNorm (batch statistics of one row); use ≥ 2")


def check_correction(correction: torch.Tensor | None, shape: tuple[int, ...]) -> None:
    """Refuse a SCAFFOLD correction that does not cover the flat layout (a programming error, not user input)."""
    if correction is not None and tuple(correction.shape) != shape:
        raise ValueError(f"correction has shape {tuple(correction.shape)}, expected {shape} (the flat layout)")


def _local_terms(
    model: nn.Module, global_vec: torch.Tensor, mu: float, correction: torch.Tensor | None
) -> Callable[[], None] | None:
    """A function that adds ``μ·(w − w_t) + correction`` to the parameters' gradients (module docstring), or
    None when there is nothing to add. The parameters are the first entries of the flat layout."""
    if not mu and correction is None:
        return None
    params, anchors, shifts, first = list(model.parameters()), [], [], 0
    for p in params:
        anchors.append(global_vec[first : first + p.numel()].view_as(p))
        shifts.append(None if correction is None else correction[first : first + p.numel()].view_as(p))
        first += p.numel()

    @torch.no_grad()
    def add() -> None:
        for p, w_t, c in zip(params, anchors, shifts):
            if p.grad is None:  # a parameter the loss does not reach still feels the local terms
                p.grad = torch.zeros_like(p)
            if mu:
                p.grad.add_(p - w_t, alpha=mu)
            if c is not None:
                p.grad.add_(c)

    return add


def train_one(
    model: nn.Module,
    global_vec: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: LocalSpec,
    seed: int,
    start: torch.Tensor | None = None,
    correction: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float, int]:
    """Train ``model`` (overwritten with ``start``, default ``global_vec``) on ``x, y``, with FedProx's term
    (``spec.mu``, anchored at ``global_vec``) and SCAFFOLD's ``correction`` ``[params]`` (module docstring);
    return ``(diff [params] = local − global_vec, mean cross-entropy over the rows trained on, SGD steps)``."""
    check_local(model, spec)
    check_correction(correction, tuple(global_vec.shape))
    load_into(model, global_vec if start is None else start)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum)
    add_terms = _local_terms(model, global_vec, spec.mu, correction)
    gen = torch.Generator().manual_seed(seed)
    n, skip_single = len(y), has_batchnorm(model)
    total, rows, steps = 0.0, 0, 0
    for _ in range(spec.epochs):
        perm = torch.randperm(n, generator=gen)
        for first in range(0, n, spec.batch_size):
            idx = perm[first : first + spec.batch_size]
            if skip_single and len(idx) == 1:
                continue  # BatchNorm cannot normalize one row (module docstring)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if add_terms is not None:
                add_terms()
            opt.step()
            total += loss.item() * len(idx)
            rows += len(idx)
            steps += 1
    return flatten(model) - global_vec, total / max(1, rows), steps


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
        starts: torch.Tensor | None = None,
        correction: torch.Tensor | None = None,
    ) -> CohortResult:
        """Train ``clients`` from ``global_vec`` (or from row i of ``starts`` ``[clients, params]``: client
        state such as FedBN's local BatchNorm), row i of ``correction`` ``[clients, params]`` (SCAFFOLD's
        ``c − c_i``) added to client i's gradients; diffs are always ``local − global_vec``."""
        check_correction(correction, (len(clients), global_vec.numel()))
        work = copy.deepcopy(model)  # one scratch model for the whole cohort; load_into resets all its state
        diffs, sizes, losses, steps = [], [], [], []
        for i, c in enumerate(clients):
            idx = data.client_indices(c)
            start = None if starts is None else starts[i]
            corr = None if correction is None else correction[i]
            diff, loss, taken = train_one(
                work, global_vec, data.x_train[idx], data.y_train[idx], spec, client_seed(seed, round, c), start, corr
            )
            diffs.append(diff)
            sizes.append(len(idx))
            losses.append(loss)
            steps.append(taken)
        return CohortResult(
            clients=list(clients),
            diffs=torch.stack(diffs) if diffs else torch.zeros(0, global_vec.numel()),  # [clients, params]
            num_samples=torch.tensor(sizes, dtype=torch.int64),
            train_loss=torch.tensor(losses, dtype=torch.float32),
            steps=torch.tensor(steps, dtype=torch.int64),
        )
