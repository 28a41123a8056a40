"""FedNova: normalized averaging (Wang, Liu, Liang, Joshi & Poor, "Tackling the Objective Inconsistency Problem
in Heterogeneous Federated Optimization", NeurIPS 2020).

A client that takes τ_i local steps of SGD with learning rate η moves by ``diff_i = −η G_i a_i``, where G_i
stacks its stochastic gradients and ``a_i`` says how much each gradient counts in the sum. FedAvg averages the
``diff_i``, so a client with more steps pulls harder and the global model converges to the optimum of a
surrogate objective weighted by ``p_i ‖a_i‖₁`` (the paper's "objective inconsistency"). FedNova averages the
*normalized* updates ``d_i = diff_i / ‖a_i‖₁`` (the average step per unit of local work) and rescales the mean
by the effective number of steps:

    x_{t+1} = x_t + τ_eff · Σ_i p_i d_i,       τ_eff = Σ_i p_i ‖a_i‖₁,       p_i = n_i / Σ_j n_j

(the paper's generalized update rule, Section 4, with FedNova's choice w_i = p_i and τ_eff = Σ p_i ‖a_i‖₁,
Section 5; its ``Δ_i = −η G_i a_i`` and ``d_i = G_i a_i / ‖a_i‖₁``). The norms ``‖a_i‖₁`` (:func:`norm_factor`):

- SGD: a_i = [1, …, 1], ``‖a_i‖₁ = τ_i``;
- SGD with momentum ρ (the buffer u ← ρu + g, step −ηu, as torch.optim.SGD and the paper's code):
  the k-th of τ gradients counts (1 − ρ^{τ−k+1}) / (1 − ρ), so ``‖a_i‖₁ = [τ − ρ(1 − ρ^τ)/(1 − ρ)] / (1 − ρ)``.

Split between client and server so that it survives secure aggregation: the CLIENT uploads ``d_i`` (it calls
:func:`normalize` before encoding), the server's ``finish(x, s, Z) = x + τ_eff · s / Z`` is linear in the sum
``s = Σ n_i d_i``, and τ_eff needs only each client's sample count and step count, which the server learns in
the clear (:meth:`FedNova.begin_round`). p_i is over the clients that answered, as FedAvg's weights are.
Not covered: a proximal term in the local objective (FedProx + FedNova, whose a_i the paper also gives) and
Nesterov momentum.
"""

from __future__ import annotations

import torch

from ..aggregators.base import Aggregator

__all__ = ["FedNova", "norm_factor", "normalize"]


def norm_factor(steps: int, momentum: float = 0.0) -> float:
    """``‖a_i‖₁`` for ``steps`` local steps of SGD with momentum ρ = ``momentum`` (0: plain SGD, = τ)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if momentum == 0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


def normalize(diff: torch.Tensor, steps: int, momentum: float = 0.0) -> torch.Tensor:
    """The client's upload ``d_i = diff / ‖a_i‖₁`` (a new tensor); a client that took no step sent no change,
    so its ``d_i`` is zero."""
    a = norm_factor(steps, momentum)
    return torch.zeros_like(diff) if a == 0 else diff / a


class FedNova(Aggregator):
    """Server side: weights ``n_i``, and ``finish(x, s, Z) = x + τ_eff · s / Z`` with the τ_eff that
    :meth:`begin_round` computed for the clients whose normalized updates are in ``s``."""

    name = "fednova"

    def __init__(self) -> None:
        self.tau_eff: float | None = None

    def weight(self, num_samples: int) -> float:
        return float(num_samples)

    def begin_round(self, weights: list[float], factors: list[float]) -> None:
        """Set τ_eff = Σ w_i a_i / Σ w_i for the next :meth:`finish` from the kept clients' weights
        (``weight(n_i)``) and norm factors (:func:`norm_factor` of their steps), in the same order."""
        if len(weights) != len(factors):
            raise ValueError(f"{len(weights)} weights but {len(factors)} norm factors")
        if any(w < 0 for w in weights) or any(a < 0 for a in factors):
            raise ValueError("weights and norm factors must be >= 0")
        total = float(sum(weights))
        self.tau_eff = sum(w * a for w, a in zip(weights, factors)) / total if total > 0 else 0.0

    def finish(self, global_vec: torch.Tensor, weighted_sum: torch.Tensor, total_weight: float) -> torch.Tensor:
        if self.tau_eff is None:
            raise RuntimeError("FedNova.begin_round(weights, factors) must be called before each round's step")
        tau_eff, self.tau_eff = self.tau_eff, None  # one round's τ_eff serves one step only
        if total_weight <= 0:
            return global_vec.clone()
        return global_vec + tau_eff * weighted_sum / total_weight
