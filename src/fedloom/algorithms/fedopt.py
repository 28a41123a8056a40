"""FedOpt: the cohort's aggregated update is a pseudo-gradient for a server optimizer.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2 (FedAdagrad, FedYogi, FedAdam), and
FedAvgM (Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification", server momentum). Each round the inner aggregator (FedAvg, or a robust rule) proposes a new
global vector; ``Δ_t = proposed − x_t`` is the negative pseudo-gradient and the server steps with it:

    FedAvgM     v_t = β v_{t−1} + Δ_t                          x_{t+1} = x_t + η v_t
    FedAdagrad  v_t = v_{t−1} + Δ_t²                           x_{t+1} = x_t + η Δ_t / (√v_t + τ)
    FedAdam     m_t = β₁ m_{t−1} + (1 − β₁) Δ_t
                v_t = β₂ v_{t−1} + (1 − β₂) Δ_t²               x_{t+1} = x_t + η m_t / (√v_t + τ)
    FedYogi     m_t as FedAdam
                v_t = v_{t−1} − (1 − β₂) Δ_t² sign(v_{t−1} − Δ_t²)

Squares, roots, signs and quotients are coordinate-wise. Parameters and the papers' symbols: ``server_lr`` is
η, ``server_momentum`` is FedAvgM's β, ``beta1``/``beta2`` are β₁/β₂, ``tau`` is the adaptivity τ.

Choices, as the paper or stated otherwise:

- No bias correction (Algorithm 2 has none). Initialisation m_{−1} = 0 and v_{−1} = τ², the least value
  Algorithm 2 allows (it asks v_{−1} ≥ τ²); FedAvgM starts from v_{−1} = 0.
- FedAdagrad takes no β₁ here (the config gives it none): m_t = Δ_t. Algorithm 2 writes a first moment for
  FedAdagrad too; β₁ = 0 is its special case (Flower's FedAdagrad does the same).
- Defaults (``algorithm_spec``): η = 1, β = 0.9 for FedAvgM; η = 0.1, β₁ = 0.9, β₂ = 0.99, τ = 10⁻³ for the
  adaptive three, inside the grids the paper searched (its Section 5 fixes β₁ = 0.9, β₂ = 0.99).
- A round with no update (no answers, zero total weight) takes no step and leaves the moments alone.

Composition. The step only needs the inner's proposal, so it composes with whatever the inner composes with:
over FedAvg it is a function of ``s = Σ w_i·diff_i`` and ``Z = Σ w_i`` (``finish``), so secure aggregation,
which only ever reveals ``s`` and ``Z``, runs it unchanged; compression happens before the inner sees the
updates. Over a non-linear inner (median, Krum, ...) Δ is that rule's step and ``linear`` is False, as the
inner's.
"""

from __future__ import annotations

import torch

from ..aggregators.base import Aggregator

__all__ = ["ServerOptimizer", "OPTIMIZERS"]

OPTIMIZERS = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")


class ServerOptimizer(Aggregator):
    """The inner aggregator's step ``Δ`` fed to a server optimizer ``name`` (see the module docstring)."""

    def __init__(
        self,
        inner: Aggregator,
        name: str,
        server_lr: float,
        server_momentum: float = 0.9,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ):
        if name not in OPTIMIZERS:
            raise ValueError(f"server optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        for key, value in (("server_momentum", server_momentum), ("beta1", beta1), ("beta2", beta2)):
            if not 0 <= value < 1:
                raise ValueError(f"{key} must be in [0, 1), got {value}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.inner = inner
        self.name = name
        self.linear = inner.linear
        self.server_lr = float(server_lr)
        self.server_momentum = float(server_momentum)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.tau = float(tau)
        self.m: torch.Tensor | None = None  # first moment (FedAvgM: Hsu et al.'s momentum buffer v)
        self.v: torch.Tensor | None = None  # second moment (adaptive optimizers only)

    # --- the aggregator contract: the inner's step, then the server optimizer's -----------------------
    def weight(self, num_samples: int) -> float:
        return self.inner.weight(num_samples)

    def finish(self, global_vec: torch.Tensor, weighted_sum: torch.Tensor, total_weight: float) -> torch.Tensor:
        if total_weight <= 0:
            return global_vec.clone()  # nothing arrived: no pseudo-gradient, no step
        return self.step(global_vec, self.inner.finish(global_vec, weighted_sum, total_weight))

    def aggregate(self, global_vec, diffs, num_samples, present=None) -> torch.Tensor:
        if diffs.shape[0] == 0:
            return global_vec.clone()
        return self.step(global_vec, self.inner.aggregate(global_vec, diffs, num_samples, present))

    # --- the server step ------------------------------------------------------------------------------
    def step(self, global_vec: torch.Tensor, proposed: torch.Tensor) -> torch.Tensor:
        """One optimizer step from ``x_t = global_vec`` with ``Δ_t = proposed − x_t``; updates the moments and
        returns ``x_{t+1}`` (a new tensor)."""
        delta = proposed - global_vec  # [params]
        if self.name == "fedavgm":
            self.m = delta.clone() if self.m is None else self.server_momentum * self.m + delta
            return global_vec + self.server_lr * self.m
        if self.m is None or self.v is None:
            self.m = torch.zeros_like(delta)
            self.v = torch.full_like(delta, self.tau**2)  # v_{−1} = τ²
        sq = delta * delta
        if self.name == "fedadagrad":
            self.m = delta
            self.v = self.v + sq
        else:
            self.m = self.beta1 * self.m + (1 - self.beta1) * delta
            if self.name == "fedadam":
                self.v = self.beta2 * self.v + (1 - self.beta2) * sq
            else:  # fedyogi: v moves towards Δ² by (1 − β₂)Δ² at most, whatever the size of the gap
                self.v = self.v - (1 - self.beta2) * sq * torch.sign(self.v - sq)
        return global_vec + self.server_lr * self.m / (self.v.sqrt() + self.tau)

    # --- checkpoints (Round.state_dict stores aggregator.state_dict()) --------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The moments (cloned); empty before the first step."""
        state = {}
        if self.m is not None:
            state["m"] = self.m.clone()
        if self.v is not None:
            state["v"] = self.v.clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` (empty: start afresh)."""
        expected = set() if not state else ({"m"} if self.name == "fedavgm" else {"m", "v"})
        if set(state) != expected:
            raise ValueError(f"{self.name} state holds {sorted(state)}, expected {sorted(expected)}")
        self.m = state["m"].clone() if "m" in state else None
        self.v = state["v"].clone() if "v" in state else None
