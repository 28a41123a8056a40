"""The aggregator contract: a linear server step over the cohort's updates.

A linear aggregator is fully described by a client-side weight ``w_i`` and a server step ``finish``:

    s = Σ_i w_i · diff_i,   Z = Σ_i w_i,   G_new = finish(G, s, Z)

Keeping it in this form is what lets secure aggregation work: clients encrypt ``w_i · diff_i`` and ``w_i``,
the server only ever adds them, and the key holder decrypts ``s`` and ``Z``. Non-linear rules (median,
trimmed mean) set ``linear = False`` and override :meth:`aggregate`; secure aggregation refuses them.

Partial updates (the book's 15.3 layer selection): when ``present`` marks which coordinates each client
sent, the book's server divides each layer's summed diffs by the number of clients that sent it. In the
form above that is: replace ``s_j`` by ``Z · m_j`` where ``m_j`` is the ``w``-weighted mean over the senders
of coordinate ``j``; FedAvg then adds the mean over senders, and the λ rule with ``λ = 1/k`` does the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..codecs.aggregate import aggregate_present

__all__ = ["Aggregator"]


class Aggregator(ABC):
    name: str = "aggregator"
    linear: bool = True

    @abstractmethod
    def weight(self, num_samples: int) -> float:
        """The client-side weight ``w_i`` of an update computed on ``num_samples`` rows."""

    @abstractmethod
    def finish(self, global_vec: torch.Tensor, weighted_sum: torch.Tensor, total_weight: float) -> torch.Tensor:
        """The new global vector from ``s = Σ w_i·diff_i`` and ``Z = Σ w_i`` (returns a new tensor)."""

    def aggregate(
        self,
        global_vec: torch.Tensor,
        diffs: torch.Tensor,
        num_samples: torch.Tensor,
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """New global vector from ``diffs`` ``[clients, params]``, ``num_samples`` ``[clients]`` and, for
        partial updates, ``present`` ``[clients, params]`` bool (which coordinates each client sent)."""
        if diffs.shape[0] == 0:
            return global_vec.clone()
        counts = num_samples.tolist() if isinstance(num_samples, torch.Tensor) else num_samples
        w = torch.tensor([self.weight(int(n)) for n in counts], dtype=diffs.dtype)  # [clients]
        total = float(w.sum())
        if present is None:
            weighted_sum = w @ diffs  # [params]
        else:
            weighted_sum = aggregate_present(diffs, present, w) * total  # [params]: Z × mean over senders
        return self.finish(global_vec, weighted_sum, total)
