"""The LEAF / FedProx "Synthetic(α, β)" federated dataset: naturally non-IID clients, power-law sizes.

Li et al. 2020, "Federated Optimization in Heterogeneous Networks" (FedProx), §5.1, after Shamir et al.
2014; also LEAF (Caldas et al. 2018). Client ``k`` has its own softmax-regression teacher and input law:

- ``u_k ~ N(0, α)``, ``B_k ~ N(0, β)`` — how much clients' models (α) and inputs (β) differ;
- ``W_k ∈ R^{dim×classes}``, ``b_k ∈ R^{classes}``: entries ``~ N(u_k, 1)``;
- ``v_k ∈ R^{dim}``: entries ``~ N(B_k, 1)``; ``x ~ N(v_k, Σ)`` with ``Σ = diag(j^{-1.2})``, ``j = 1..dim``;
- ``y = argmax softmax(W_kᵀ x + b_k)``.

As in FedProx's generator (``np.random.normal(0, alpha)``), α and β are the standard deviations of the
normals. Client sizes follow FedProx's power law, ``lognormal(4, 2)`` draws, rescaled here so that they sum
to ``num_samples`` with at least ``min_size`` rows per client. FedProx's experiments use dim 60, 10 classes
and (α, β) ∈ {(0, 0), (0.5, 0.5), (1, 1)}.
"""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic", "power_law_sizes"]

_LOGNORMAL_MEAN, _LOGNORMAL_SIGMA = 4.0, 2.0  # FedProx generate_niid.py: np.random.lognormal(4, 2)
_COV_EXPONENT = -1.2  # Σ_jj = j^-1.2 (FedProx §5.1)


def power_law_sizes(num_clients: int, num_samples: int, rng: np.random.Generator, min_size: int = 1) -> np.ndarray:
    """``[clients]`` int64 sizes ∝ lognormal(4, 2) draws, each ≥ ``min_size``, summing to ``num_samples``."""
    if num_clients < 1 or min_size < 1:
        raise ValueError(f"need num_clients ≥ 1 and min_size ≥ 1, got {num_clients} and {min_size}")
    spare = num_samples - min_size * num_clients
    if spare < 0:
        raise ValueError(f"num_samples {num_samples} < {num_clients} clients × min_size {min_size}")
    share = rng.lognormal(_LOGNORMAL_MEAN, _LOGNORMAL_SIGMA, num_clients)
    exact = share / share.sum() * spare  # [clients] real-valued extra rows
    extra = np.floor(exact).astype(np.int64)
    left = spare - int(extra.sum())
    extra[np.argsort(extra - exact, kind="stable")[:left]] += 1  # largest remainders get the leftover rows
    return extra + min_size


def synthetic(
    num_clients: int,
    num_samples: int,
    dim: int,
    classes: int,
    alpha: float,
    beta: float,
    rng: np.random.Generator,
    min_size: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic(α, β): ``(x [N, dim] float32, y [N] int64, sizes [clients] int64)``, ``N = num_samples``.

    Rows are grouped by client in order: client ``k`` owns rows ``sizes[:k].sum()`` up to
    ``sizes[:k + 1].sum()``. Memory is one float32 copy of ``x`` plus per-client parameters; time is one
    small matrix product per client."""
    if dim < 1 or classes < 2:
        raise ValueError(f"need dim ≥ 1 and classes ≥ 2, got dim {dim} and classes {classes}")
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta are standard deviations and must be ≥ 0, got {alpha} and {beta}")
    sizes = power_law_sizes(num_clients, num_samples, rng, min_size)
    u = rng.normal(0.0, alpha, num_clients)  # [clients] mean of the client's model
    shift = rng.normal(0.0, beta, num_clients)  # [clients] B_k, mean of the client's input mean
    v = rng.normal(shift[:, None], 1.0, (num_clients, dim)).astype(np.float32)  # [clients, dim]
    std = (np.arange(1, dim + 1, dtype=np.float64) ** (_COV_EXPONENT / 2)).astype(np.float32)  # sqrt diag Σ
    x = rng.standard_normal((num_samples, dim), dtype=np.float32)  # [N, dim], scaled and shifted per client
    x *= std
    y = np.empty(num_samples, dtype=np.int64)
    ends = np.cumsum(sizes)
    for k, (lo, hi) in enumerate(zip(ends - sizes, ends)):
        w = rng.normal(u[k], 1.0, (dim + 1, classes)).astype(np.float32)  # [dim + 1, classes]: W_k and b_k
        block = x[lo:hi]
        block += v[k]
        y[lo:hi] = (block @ w[:dim] + w[dim]).argmax(1)  # argmax of softmax = argmax of the logits
    return x, y, sizes
