"""FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from Decentralized
Data", Algorithm 1): ``G ← G + Σ_i (n_i / n) · diff_i`` with ``n = Σ_i n_i`` over the clients that answered.

Written on differences, this is ``w_{t+1} = Σ_k (n_k/n) w^k_{t+1}`` of the paper: the mean of the local
models weighted by their sample counts ``n_k``.
"""

from __future__ import annotations

import torch

from .base import Aggregator

__all__ = ["FedAvg"]


class FedAvg(Aggregator):
    name = "fedavg"

    def weight(self, num_samples: int) -> float:
        return float(num_samples)

    def finish(self, global_vec: torch.Tensor, weighted_sum: torch.Tensor, total_weight: float) -> torch.Tensor:
        if total_weight <= 0:
            return global_vec.clone()
        return global_vec + weighted_sum / total_weight
