"""A client: its id, its shard of the data, a local resource check, and local training.

The seed note asks clients to check, before training, that the machine's CPU and memory suffice for the
task. :meth:`Client.check_resources` estimates what training needs (data, model copies, optimizer state,
activations of one batch) and compares it with what is free (or with a configured per-client limit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import psutil
import torch
from torch import nn

from .data import FedData
from .training import LocalSpec, client_seed, train_one

__all__ = ["Client", "ResourceReport", "Update", "usable_cpus"]

_BYTES = 4  # float32


@dataclass(frozen=True)
class ResourceReport:
    ok: bool
    cpus: int
    free_mb: float
    need_mb: float
    reason: str = ""


@dataclass
class Update:
    """What a client answers: its model difference, sample count and metrics (no codec-specific fields)."""

    client_id: int
    diff: torch.Tensor  # [params] local − global
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0  # SGD steps of its local training (FedNova's τ_i, SCAFFOLD's K)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


class Client:
    """One party of the federation. Holds index views into the shared data, never a copy."""

    def __init__(self, client_id: int, data: FedData, memory_limit_mb: float | None = None):
        self.id = client_id
        self.data = data
        self.memory_limit_mb = memory_limit_mb
        self._needed: tuple[tuple[int, int], float] | None = None  # ((params, batch), MB): asked every round

    @property
    def num_samples(self) -> int:
        return int(self.data.partition.sizes()[self.id])

    def memory_needed_mb(self, num_params: int, spec: LocalSpec) -> float:
        """Estimate: own rows, four model-sized vectors (global, local, gradient, momentum) and one batch's
        activations (rows × features, with headroom ×8 for hidden layers and their gradients)."""
        key = (num_params, spec.batch_size)
        if self._needed is None or self._needed[0] != key:
            rows = self.num_samples * (self.data.num_features * _BYTES + 8)
            models = 4 * num_params * _BYTES
            batch = 8 * spec.batch_size * self.data.num_features * _BYTES
            self._needed = key, (rows + models + batch) / 2**20
        return self._needed[1]

    def check_resources(
        self, num_params: int, spec: LocalSpec, free_mb: float | None = None, cpus: int | None = None
    ) -> ResourceReport:
        """Whether this machine (or the configured limit) can hold the training task; says why not.

        ``free_mb``, ``cpus``: available memory and usable CPUs already read by the caller (a simulation reads
        them once per round for the whole cohort, since its clients share one machine); read here when not given."""
        cpus = usable_cpus() if cpus is None else cpus
        free = psutil.virtual_memory().available / 2**20 if free_mb is None else free_mb
        if self.memory_limit_mb is not None:
            free = min(free, self.memory_limit_mb)
        need = self.memory_needed_mb(num_params, spec)
        if cpus < 1:
            return ResourceReport(False, cpus, free, need, "no CPU available")
        if need > free:
            return ResourceReport(False, cpus, free, need, f"needs {need:.3g} MB, {free:.3g} MB free")
        return ResourceReport(True, cpus, free, need)

    def local_train(
        self,
        model: nn.Module,
        global_vec: torch.Tensor,
        spec: LocalSpec,
        seed: int,
        round: int,
        correction: torch.Tensor | None = None,
    ) -> Update:
        """Train a copy of the global model on this client's rows (the reference path; see training.py), with
        FedProx's ``spec.mu`` and SCAFFOLD's ``correction`` ``[params]`` (``c − c_i``) when given."""
        idx = self.data.client_indices(self.id)
        diff, loss, steps = train_one(
            model,
            global_vec,
            self.data.x_train[idx],
            self.data.y_train[idx],
            spec,
            client_seed(seed, round, self.id),
            correction=correction,
        )
        return Update(self.id, diff, len(idx), {"train_loss": loss}, steps)
