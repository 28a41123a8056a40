"""SCAFFOLD: control variates against client drift (Karimireddy, Kale, Mohri, Reddi, Stich & Suresh,
"SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML 2020, Algorithm 1, option II).

The server keeps a control variate ``c`` (an estimate of the global gradient), each client ``i`` its own ``c_i``
(of its local gradient). A client starts at the global ``x`` and takes K local steps corrected for drift,

    y_i ← y_i − η_l (g_i(y_i) − c_i + c)

(the engines add ``c − c_i`` to each step's gradient: ``correction``), then updates its control variate by
option II, which reuses the gradients it already computed:

    c_i⁺ = c_i − c + (x − y_i) / (K η_l)                                       (:func:`client_control`)

and sends ``Δy_i = y_i − x`` (fedloom's ``diff``) and ``Δc_i = c_i⁺ − c_i``. The server steps

    x ← x + η_g Δx,       c ← c + (1/N) Σ_{i∈S} Δc_i                          (:class:`Scaffold`)

Parameters and the paper's symbols: ``server_lr`` is η_g (default 1, fedloom's choice: with η_g = 1 the step is
FedAvg's), ``steps`` is K, ``lr`` is η_l, N is the number of clients in the federation, S the clients that
answered. Δx is fedloom's FedAvg weighting, ``Σ n_i Δy_i / Σ n_i``; the paper's plain mean
``(1/|S|) Σ Δy_i`` is its special case of equal shards. Δc is summed plainly, as the paper's
``(|S|/N)·(1/|S|) Σ Δc_i``: c stays the mean of all N clients' c_i.

Option II assumes the K steps were plain SGD steps of size η_l (momentum would change what (x − y_i)/(K η_l)
estimates). Secure aggregation: the server step is linear in ``s = Σ n_i Δy_i`` (``finish``), but c's update
needs ``Σ Δc_i`` too, a second vector each client would have to encrypt; fedloom does not build that, so the
config refuses SCAFFOLD with secure aggregation (``algorithm_spec.algorithm_problem``).
"""

from __future__ import annotations

import torch

from ..aggregators.base import Aggregator

__all__ = ["Scaffold", "client_control"]


def client_control(c_i: torch.Tensor, c: torch.Tensor, diff: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """Option II: the client's new control variate ``c_i⁺ = c_i − c − diff / (steps·lr)`` from its old one,
    the server's ``c``, its update ``diff = y_i − x``, its number of local steps K and learning rate η_l.
    A client that took no step learned nothing about its gradient and keeps ``c_i`` (a copy)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if steps == 0:
        return c_i.clone()
    return c_i - c - diff / (steps * lr)


class Scaffold(Aggregator):
    """The server: FedAvg's weights, step ``x ← x + η_g · s / Z``, and the control variate ``c``."""

    name = "scaffold"

    def __init__(self, server_lr: float = 1.0) -> None:
        if not server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.server_lr = float(server_lr)
        self.c: torch.Tensor | None = None  # [params]; None until the first update: zeros

    def weight(self, num_samples: int) -> float:
        return float(num_samples)

    def finish(self, global_vec: torch.Tensor, weighted_sum: torch.Tensor, total_weight: float) -> torch.Tensor:
        if total_weight <= 0:
            return global_vec.clone()
        return global_vec + self.server_lr * weighted_sum / total_weight

    def control(self, size: int) -> torch.Tensor:
        """The server's ``c`` ``[size]`` to send down (zeros before any update; a copy)."""
        if self.c is None:
            return torch.zeros(size)
        if self.c.numel() != size:
            raise ValueError(f"control variate has {self.c.numel()} values, the layout {size}")
        return self.c.clone()

    def update_control(self, deltas: torch.Tensor, num_clients: int) -> None:
        """``c ← c + (1/N) Σ_i Δc_i`` from the answering clients' ``deltas`` ``[clients, params]`` and the
        federation's size ``N = num_clients``."""
        if num_clients < 1:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        if deltas.dim() != 2:
            raise ValueError(f"deltas must be [clients, params], got shape {tuple(deltas.shape)}")
        c = self.control(deltas.shape[1]).to(deltas.dtype)
        self.c = c + deltas.sum(dim=0) / num_clients  # [params]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"c": c}``; empty before the first update."""
        return {} if self.c is None else {"c": self.c.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) - {"c"}:
            raise ValueError(f"scaffold state holds {sorted(state)}, expected ['c']")
        self.c = state["c"].clone() if "c" in state else None
