"""The LEAF / FedProx "Synthetic(α, β)" federated dataset: naturally non-IID clients, power-law sizes.

Li et al. 2020, "Federated Optimization in Heterogeneous Networks" (FedProx), §5.1, after Shamir et al.
2014; also LEAF (Caldas et al. 2018). Client ``k`` has its own softmax-regression teacher and input law:

- ``u_k ~ N(0, α)``, ``B_k ~ N(0, β)`` — meant as how much clients' models (α) and inputs (β) differ;
- ``W_k ∈ R^{dim×classes}``, ``b_k ∈ R^{classes}``: entries ``~ N(u_k, 1)``;
- ``v_k ∈ R^{dim}``: entries ``~ N(B_k, 1)``; ``x ~ N(v_k, Σ)`` with ``Σ = diag(j^{-1.2})``, ``j = 1..dim``;
- ``y = argmax softmax(W_kᵀ x + b_k)``.

As in FedProx's generator (``np.random.normal(0, alpha)``), α and β are the standard deviations of the
normals. Client sizes follow FedProx's power law, ``lognormal(4, 2)`` draws, rescaled here so that they sum
to ``num_samples`` with at least ``min_size`` rows per client. FedProx's experiments use dim 60, 10 classes
and (α, β) ∈ {(0, 0), (0.5, 0.5), (1, 1)}. That is :func:`synthetic` (``synthetic.generator: leaf``).

What α does: ``u_k`` is the mean of every entry of ``W_k`` and ``b_k``, so it adds ``u_k·(1 + Σ_j x_j)`` to all
logits of a row alike, which the argmax ignores. With the same draws, α changes no label (up to float32
rounding; tests/test_synthetic_fedprox.py shows it); the clients' teachers differ through their own
``N(0, 1)`` entries whatever α, so even Synthetic(0, 0) is non-IID. β does move the labels (through ``v_k``).

:func:`fedprox_federation` (``generator: fedprox`` and ``fedprox_iid``) follows FedProx's own generator scripts
instead (github.com/litian96/FedProx, ``data/synthetic_1_1/generate_synthetic.py`` and
``data/synthetic_iid/generate_iid.py``) where they differ from the above:

- sizes are not rescaled: device ``k`` has ``n_k = int(lognormal(4, 2)) + 50`` rows, so the total is drawn,
  not set;
- the bias shares the model's mean, ``b_k ~ N(u_k, 1)`` (the scripts' ``mean_b = mean_W``);
- each device splits its own rows: the first ``int(0.9·n_k)`` train, the rest are its test rows (the scripts
  shuffle a device's rows first; they are i.i.d. draws, so taking them in order is the same law);
- ``fedprox_iid`` is the paper's Synthetic-IID: one ``W, b ~ N(0, 1)`` for all devices and ``v_k = 0``, so
  every device draws ``x ~ N(0, Σ)`` from the same law (α and β take no part).
"""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic", "power_law_sizes", "fedprox_sizes", "fedprox_train_rows", "fedprox_federation"]

_LOGNORMAL_MEAN, _LOGNORMAL_SIGMA = 4.0, 2.0  # FedProx generate_niid.py: np.random.lognormal(4, 2)
_COV_EXPONENT = -1.2  # Σ_jj = j^-1.2 (FedProx §5.1)
_FEDPROX_MIN_ROWS = 50  # generate_synthetic.py: lognormal(4, 2).astype(int) + 50


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


def fedprox_sizes(num_devices: int, rng: np.random.Generator) -> np.ndarray:
    """``[devices]`` int64 rows per device, FedProx's ``int(lognormal(4, 2)) + 50`` (not rescaled: the total is
    drawn). The median device has about 105 rows, the mean about 450; the tail is heavy."""
    return rng.lognormal(_LOGNORMAL_MEAN, _LOGNORMAL_SIGMA, num_devices).astype(np.int64) + _FEDPROX_MIN_ROWS


def fedprox_train_rows(sizes: np.ndarray) -> np.ndarray:
    """``[devices]`` training rows of each device: ``int(0.9·n_k)`` as FedProx's scripts (``9·n // 10``: the
    same integer, computed without floating point)."""
    return (9 * sizes) // 10


def fedprox_federation(
    num_devices: int,
    dim: int,
    classes: int,
    alpha: float,
    beta: float,
    iid: bool,
    rng: np.random.Generator,
    max_values: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """FedProx's Synthetic(α, β) (or Synthetic-IID with ``iid``), split per device:
    ``(x_train, y_train, x_test, y_test, train_sizes)``, rows grouped by device in order.

    Draws, in order: the sizes, then ``u_k ~ N(0, α)``, ``B_k ~ N(0, β)``, ``v_k ~ N(B_k, 1)`` for every device
    (IID: one ``W, b``), then per device its ``W_k, b_k ~ N(u_k, 1)`` and rows ``x ~ N(v_k, Σ)``. Refuses
    (ValueError) a draw of more than ``max_values`` features in all, before allocating it."""
    if dim < 1 or classes < 2:
        raise ValueError(f"need dim ≥ 1 and classes ≥ 2, got dim {dim} and classes {classes}")
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta are standard deviations and must be ≥ 0, got {alpha} and {beta}")
    sizes = fedprox_sizes(num_devices, rng)
    total = int(sizes.sum())
    if total * dim > max_values:
        raise ValueError(
            f"{num_devices} devices drew {total:,} rows (int(lognormal(4, 2)) + 50 each), {total * dim:,} values "
            f"with dim {dim}; at most {max_values:,} are generated: use fewer devices (no_models) or a smaller dim"
        )
    x, y = _fedprox_rows(sizes, dim, classes, alpha, beta, iid, rng)
    train = fedprox_train_rows(sizes)
    starts = np.cumsum(sizes) - sizes
    position = np.arange(total) - np.repeat(starts, sizes)  # [rows] index of each row within its device
    is_train = position < np.repeat(train, sizes)
    return x[is_train], y[is_train], x[~is_train], y[~is_train], train


def _fedprox_rows(
    sizes: np.ndarray, dim: int, classes: int, alpha: float, beta: float, iid: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(x [N, dim] float32, y [N] int64)``: each device's rows from its teacher, devices in order."""
    n = len(sizes)
    if iid:  # generate_iid.py: every device's input mean is 0 and one teacher labels all rows
        v = np.zeros((n, dim), dtype=np.float32)
        shared = rng.normal(0.0, 1.0, (dim + 1, classes)).astype(np.float32)  # [dim + 1, classes]: W and b
    else:
        u = rng.normal(0.0, alpha, n)  # [devices] u_k, mean of W_k and of b_k
        shift = rng.normal(0.0, beta, n)  # [devices] B_k
        v = rng.normal(shift[:, None], 1.0, (n, dim)).astype(np.float32)  # [devices, dim] v_k
    std = (np.arange(1, dim + 1, dtype=np.float64) ** (_COV_EXPONENT / 2)).astype(np.float32)  # sqrt diag Σ
    x = np.empty((int(sizes.sum()), dim), dtype=np.float32)
    y = np.empty(len(x), dtype=np.int64)
    ends = np.cumsum(sizes)
    for k, (lo, hi) in enumerate(zip(ends - sizes, ends)):
        w = shared if iid else rng.normal(u[k], 1.0, (dim + 1, classes)).astype(np.float32)
        block = rng.standard_normal((hi - lo, dim), dtype=np.float32)
        block *= std
        block += v[k]
        x[lo:hi] = block
        y[lo:hi] = (block @ w[:dim] + w[dim]).argmax(1)  # argmax of softmax = argmax of the logits
    return x, y
