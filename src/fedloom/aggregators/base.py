"""The aggregator contract: a linear server step over the cohort's updates.

A linear aggregator is fully described by a client-side weight ``w_i`` and a server step ``finish``:

    s = Σ_i w_i · diff_i,   Z = Σ_i w_i,   G_new = finish(G, s, Z)

Keeping it in this form is what lets secure aggregation work: clients encrypt ``w_i · diff_i`` and ``w_i``,
the server only ever adds them, and the key holder decrypts ``s`` and ``Z``. Non-linear rules (median,
trimmed mean) set ``linear = False`` and override :meth:`aggregate`; secure aggregation refuses them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

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

    def aggregate(self, global_vec: torch.Tensor, diffs: torch.Tensor, num_samples: torch.Tensor) -> torch.Tensor:
        """New global vector from ``diffs`` ``[clients, params]`` and ``num_samples`` ``[clients]``."""
        if diffs.shape[0] == 0:
            return global_vec.clone()
        w = torch.tensor([self.weight(int(n)) for n in num_samples], dtype=diffs.dtype)  # [clients]
        weighted_sum = w @ diffs  # [params]
        return self.finish(global_vec, weighted_sum, float(w.sum()))
