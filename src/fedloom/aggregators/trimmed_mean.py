"""Coordinate-wise trimmed mean (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", Algorithm 1 option II): for each coordinate, drop the ``b`` largest and ``b`` smallest
values and average the rest.

Convention: ``b = ⌊β·n⌋`` of the ``n`` values (the paper's β ∈ [0, 1/2)), ``beta`` defaults to 0.2. With
partial updates each coordinate is trimmed over its own ``n_j`` senders (``b_j = ⌊β·n_j⌋``), which is the
dense rule when everybody sent it; a coordinate nobody sent does not move. Each update counts once: sample
counts reported by clients are ignored (see robust.py).
"""

from __future__ import annotations

import torch

from .robust import RobustAggregator

__all__ = ["TrimmedMean"]


class TrimmedMean(RobustAggregator):
    name = "trimmed_mean"
    partial = True

    def __init__(self, beta: float | None = None):
        self.beta = 0.2 if beta is None else float(beta)
        if not 0 <= self.beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5), got {self.beta}")

    def combine(self, diffs: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        n = diffs.shape[0]
        if present is None:
            present = torch.ones_like(diffs, dtype=torch.bool)
        # absent values sort last (+inf); rank r of coordinate j is kept when b_j ≤ r < n_j − b_j
        vals = diffs.masked_fill(~present, float("inf")).sort(dim=0).values  # [clients, params]
        n_j = present.sum(0)  # [params]
        b_j = torch.floor(self.beta * n_j.to(torch.float64)).to(torch.int64)
        rank = torch.arange(n)[:, None]  # [clients, 1]
        keep = (rank >= b_j) & (rank < n_j - b_j)  # [clients, params]
        total = torch.where(keep, vals, torch.zeros_like(vals)).sum(0)
        count = keep.sum(0)
        return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
