"""Model-poisoning attacks: what an attacker sends in place of its honest update (pure functions, tested by hand).

``honest`` is ``[h, params]``: the updates of the cohort's honest clients this round (the omniscient attacker
of Baruch et al. and Xie et al., who knows the benign updates); every attacker sends the same vector.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

__all__ = ["sign_flip", "ipm", "gaussian", "alie", "alie_z"]


def sign_flip(honest: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``−scale × mean(honest)`` ``[params]``."""
    return -scale * honest.mean(0)


def ipm(honest: torch.Tensor, epsilon: float = 0.5) -> torch.Tensor:
    """Inner-product manipulation (Xie, Koyejo & Gupta 2019, "Fall of Empires: Breaking Byzantine-tolerant
    SGD by Inner Product Manipulation", §3): ``−ε × mean(honest)``, which makes the inner product of the
    aggregate with the true mean negative when enough attackers get through. Small ε (0.1) slips past Krum."""
    return -epsilon * honest.mean(0)


def gaussian(params: int, std: float, gen: torch.Generator) -> torch.Tensor:
    """A random update ``N(0, std²)`` per coordinate ``[params]``, from ``gen`` (seeded per round and client)."""
    return std * torch.randn(params, generator=gen, dtype=torch.float64).to(torch.float32)


def alie_z(n: int, f: int) -> float:
    """Baruch, Baruch & Goldberg 2019 ("A Little Is Enough", §3, eq. for z^max): the attackers need
    ``s = ⌊n/2 + 1⌋ − f`` honest workers to side with them, and ``z = Φ⁻¹((n − s)/n)``.

    With ``s`` outside ``1..n−1`` the probability hits 0 or 1; ``s`` is clamped to that range there."""
    s = min(max(math.floor(n / 2 + 1) - f, 1), n - 1) if n > 1 else 1
    return NormalDist().inv_cdf((n - s) / n) if n > 1 else 0.0


def alie(honest: torch.Tensor, z: float) -> torch.Tensor:
    """``μ − z·σ`` per coordinate over the honest updates (σ with the n denominator, so one honest update
    gives σ = 0 rather than NaN): inside the spread of the honest values, hence past median and Krum."""
    return honest.mean(0) - z * honest.std(0, correction=0)
