"""The book's server step (《联邦学习实战》 §3.3, ``Server.model_aggregate``): ``G ← G + λ · Σ_i diff_i``.

Every sampled client counts the same whatever its data size (``w_i = 1``), and ``λ`` is a server step
size: ``λ = 1/k`` is the plain mean of the k updates; the book's ``λ = 0.1`` with ``k = 5`` takes half
of the mean step.
"""

from __future__ import annotations

import torch

from .base import Aggregator

__all__ = ["BookLambda"]


class BookLambda(Aggregator):
    name = "book-lambda"

    def __init__(self, lam: float):
        if lam <= 0:
            raise ValueError(f"lambda must be > 0, got {lam}")
        self.lam = lam

    def weight(self, num_samples: int) -> float:
        return 1.0

    def finish(self, global_vec: torch.Tensor, weighted_sum: torch.Tensor, total_weight: float) -> torch.Tensor:
        return global_vec + self.lam * weighted_sum
