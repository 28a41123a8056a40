"""Geometric median by smoothed Weiszfeld (Pillutla, Kakade & Harchaoui 2022, "Robust Aggregation for
Federated Learning", Algorithm 2, RFA): the point ``v`` minimising ``Σ_i max(ν, ‖v − Δ_i‖)``, found by

    β_i = 1 / max(ν, ‖v − Δ_i‖),   v ← Σ_i β_i Δ_i / Σ_i β_i

started from the plain mean and iterated until the objective ``g(v) = Σ_i ‖v − Δ_i‖`` improves by less than
``tol · g(v)`` or ``max_iter`` iterations have run (``nu`` is the paper's ν, default 1e-6).

Convention: the paper weights each point by α_i ∝ the client's sample count; fedloom gives every update the
same weight, because a client-reported count would hand an attacker the median. Float64 on updates.
"""

from __future__ import annotations

import torch

from .robust import RobustAggregator

__all__ = ["GeometricMedian"]


class GeometricMedian(RobustAggregator):
    name = "geomed"

    def __init__(self, nu: float = 1e-6, tol: float = 1e-6, max_iter: int = 100):
        if nu <= 0 or tol <= 0 or max_iter < 1:
            raise ValueError("geomed needs nu > 0, tol > 0 and max_iter ≥ 1")
        self.nu, self.tol, self.max_iter = nu, tol, max_iter
        self.iterations = 0  # of the last call, for tests and logs

    def combine(self, diffs: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        v = diffs.mean(0)  # [params]
        dist = (diffs - v).norm(dim=1)  # [clients]
        obj = float(dist.sum())
        self.iterations = 0
        for _ in range(self.max_iter):
            beta = 1.0 / dist.clamp_min(self.nu)  # [clients]
            v = (beta[:, None] * diffs).sum(0) / beta.sum()
            dist = (diffs - v).norm(dim=1)
            new = float(dist.sum())
            self.iterations += 1
            done = obj - new <= self.tol * new
            obj = new
            if done:
                break
        return v
