"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", §4).

Krum scores each update by the sum of its squared distances to its ``n − f − 2`` nearest other updates
and keeps the one with the lowest score; it tolerates ``f`` Byzantine updates when ``n ≥ 2f + 3``
(``n > 2f + 2`` in the paper). Multi-Krum averages the ``m`` lowest-scored updates (``m = 1`` is Krum;
default ``m = n − f``, the paper's experiments). Ties go to the lower client index.

Conventions: ``f`` defaults to ⌊0.2·n⌋ lowered until ``n ≥ 2f + 3`` holds (aggregator_spec.py). Distances
are on updates, in float64, by direct differences (robust.py). The chosen updates are averaged with equal
weights: weighting them by client-reported sample counts would hand an attacker the aggregate.
"""

from __future__ import annotations

import torch

from .robust import RobustAggregator, pairwise_sq_dists

__all__ = ["Krum", "MultiKrum", "krum_scores"]


def krum_scores(dist: torch.Tensor, f: int) -> torch.Tensor:
    """``[n]`` Krum scores from squared distances ``[n, n]``: the sum over the ``n − f − 2`` nearest others."""
    n = dist.shape[0]
    near = max(0, n - f - 2)
    if near == 0:
        return torch.zeros(n, dtype=dist.dtype)
    others = dist + torch.diag(torch.full((n,), float("inf"), dtype=dist.dtype))  # a vector is not its own neighbour
    return others.sort(dim=1).values[:, :near].sum(1)


def lowest(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the ``m`` lowest scores, ties to the lower index."""
    return torch.sort(scores, stable=True).indices[:m]


class MultiKrum(RobustAggregator):
    name = "multikrum"

    def __init__(self, f: int | None = None, m: int | None = None):
        self.f, self.m = f, m

    def select(self, diffs: torch.Tensor) -> torch.Tensor:
        """Indices of the updates this rule averages."""
        n = diffs.shape[0]
        f = self.f_for(n, self.f, self.m)
        m = n - f if self.m is None else self.m
        return lowest(krum_scores(pairwise_sq_dists(diffs), f), m)

    def combine(self, diffs: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        return diffs[self.select(diffs)].mean(0)


class Krum(MultiKrum):
    name = "krum"

    def __init__(self, f: int | None = None):
        super().__init__(f, m=1)
