"""Norm clipping (Sun et al. 2019, "Can You Really Backdoor Federated Learning?", §4 "norm thresholding"):
each update is scaled to L2 norm at most ``M`` (``Δ_i · min(1, M/‖Δ_i‖)``), then the clipped updates are
averaged, each counting once (client-reported sample counts are ignored: see robust.py).

``max_norm`` is the paper's ``M``. Its default (a fedloom convention, not the paper's: Sun et al. pick M by
hand) is the median of the round's update norms, so that at most half the updates are shortened. With
partial updates a client's norm is over what it sent, and each coordinate is the mean over its senders, which
is the dense rule when everybody sent everything.
"""

from __future__ import annotations

import torch

from ..codecs.aggregate import aggregate_present
from .robust import RobustAggregator

__all__ = ["NormClip"]


class NormClip(RobustAggregator):
    name = "norm_clip"
    partial = True

    def __init__(self, max_norm: float | None = None):
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm = max_norm

    def combine(self, diffs: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        norms = diffs.norm(dim=1)  # [clients]; absent coordinates are zeros, so this is over what was sent
        bound = float(torch.quantile(norms, 0.5)) if self.max_norm is None else self.max_norm
        scale = torch.where(norms > bound, bound / norms.clamp_min(1e-300), torch.ones_like(norms))
        clipped = diffs * scale[:, None]  # [clients, params]
        return aggregate_present(clipped, present, torch.ones(diffs.shape[0], dtype=torch.float64))
