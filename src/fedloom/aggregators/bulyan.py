"""Bulyan (El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed Learning in Byzantium", §4).

1. Selection: ``θ = n − 2f`` times, run Krum (with the same ``f``) on the updates not yet selected and move
   its choice to the selection set (Krum's neighbours: ``|R| − f − 2`` of the remaining set ``R``).
2. Aggregation: coordinate by coordinate, average the ``β = θ − 2f`` selected values closest to the
   selection's median (the mean of the two middle values when θ is even).

Needs ``n ≥ 4f + 3``; a config or a round with fewer updates is refused with one line. ``f`` defaults to
⌊0.2·n⌋ lowered until the condition holds. Distances in float64 on updates (robust.py); every update
counts once (client-reported sample counts are ignored: they would hand an attacker the weights).
"""

from __future__ import annotations

import torch

from .krum import krum_scores, lowest
from .robust import RobustAggregator, pairwise_sq_dists

__all__ = ["Bulyan"]


class Bulyan(RobustAggregator):
    name = "bulyan"

    def __init__(self, f: int | None = None):
        self.f = f

    def select(self, diffs: torch.Tensor, f: int) -> list[int]:
        """The θ = n − 2f indices chosen by recursive Krum, in the order chosen."""
        dist = pairwise_sq_dists(diffs)
        remaining = list(range(diffs.shape[0]))
        chosen: list[int] = []
        for _ in range(diffs.shape[0] - 2 * f):
            sub = dist[remaining][:, remaining]  # [|R|, |R|]
            pick = remaining[int(lowest(krum_scores(sub, f), 1)[0])]
            chosen.append(pick)
            remaining.remove(pick)
        return chosen

    def combine(self, diffs: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        f = self.f_for(diffs.shape[0], self.f)
        sel = diffs[self.select(diffs, f)]  # [θ, params]
        beta = sel.shape[0] - 2 * f
        theta = sel.shape[0]
        ordered = sel.sort(dim=0).values
        med = (ordered[(theta - 1) // 2] + ordered[theta // 2]) / 2  # [params]
        closest = (sel - med).abs().topk(beta, dim=0, largest=False).indices  # [β, params]
        return sel.gather(0, closest).mean(0)
