"""Splitting a training set among clients.

A partition is stored once as a permutation of the training rows plus offsets: client ``c`` owns
``order[offsets[c]:offsets[c+1]]``. That is two integer arrays whatever the number of clients, so a
10 000-client federation costs no per-client copies.

Methods (``partition.method``):
- ``contiguous`` — the book's ch.3 slicing: client ``c`` gets rows ``[c·L, (c+1)·L)`` with
  ``L = N // no_models``; the last ``N mod no_models`` rows are unused, as in the book.
- ``iid`` — shuffle, then split into shards whose sizes differ by at most one.
- ``dirichlet`` — label skew, "distribution-based label imbalance" (Li et al. 2022, "Federated learning on
  non-IID data silos: an experimental study"; first in Yurochkin et al. 2019, "Bayesian nonparametric
  federated learning of neural networks"): for each class, its rows are split among clients by proportions
  ``p ~ Dir(alpha · 1)``; small ``alpha`` gives each client few classes. Client sizes come out *unequal*
  (a client gets the sum of its shares of every class). Hsu, Qi & Brown 2019 ("Measuring the effects of
  non-identical data distribution", §3) is a different scheme — each client draws its own class mix
  ``q ~ Dir(alpha · p)`` over equal-size shards — and is not what this method does.
- ``shards`` — label shards (McMahan et al. 2017, FedAvg paper §3, "pathological non-IID"): rows sorted by
  label, cut into ``no_models · shards_per_client`` equal shards, each client gets ``shards_per_client``.
- ``quantity`` — size skew: client sizes are ``N · q`` with ``q ~ Dir(alpha · 1)`` (Li et al. 2022,
  "Federated learning on non-IID data silos", §4.2), rows assigned at random.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["Partition", "partition", "METHODS"]

METHODS = ("iid", "contiguous", "dirichlet", "shards", "quantity")
_MAX_DRAWS = 1000  # redraws of a Dirichlet split before giving up on min_size


@dataclass(frozen=True)
class Partition:
    order: np.ndarray  # [rows used] int64 indices into the training set
    offsets: np.ndarray  # [clients + 1] int64

    @property
    def num_clients(self) -> int:
        return len(self.offsets) - 1

    def indices(self, client: int) -> np.ndarray:
        return self.order[self.offsets[client] : self.offsets[client + 1]]

    def sizes(self) -> np.ndarray:
        """``[clients]`` rows per client (read-only, computed once: a round asks for it once per client,
        which with 10 000 clients recomputed all of them 1 000 times a round)."""
        cached = self.__dict__.get("_sizes")
        if cached is None:
            cached = np.diff(self.offsets)
            cached.flags.writeable = False
            self.__dict__["_sizes"] = cached  # the dataclass is frozen: its fields, not this cache
        return cached

    def label_counts(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        """``[clients, classes]`` number of rows of each label per client."""
        owner = np.repeat(np.arange(self.num_clients), self.sizes())
        out = np.zeros((self.num_clients, num_classes), dtype=np.int64)
        np.add.at(out, (owner, y[self.order]), 1)
        return out

    @classmethod
    def from_lists(cls, parts: list[np.ndarray]) -> Partition:
        sizes = [len(p) for p in parts]
        order = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return cls(order, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))


def partition(
    y: np.ndarray,
    num_clients: int,
    method: str,
    rng: np.random.Generator,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_size: int = 1,
) -> Partition:
    """Split rows with labels ``y`` among ``num_clients`` clients (see the module docstring)."""
    n = len(y)
    if n < num_clients:
        raise ConfigError(f"no_models ({num_clients}) exceeds the {n} training rows: every client needs data")
    if method == "contiguous":
        size = n // num_clients
        return Partition(np.arange(size * num_clients, dtype=np.int64), np.arange(num_clients + 1) * size)
    if method == "iid":
        return Partition.from_lists(np.array_split(rng.permutation(n), num_clients))
    if method == "dirichlet":
        return _dirichlet(y, num_clients, alpha, min_size, rng)
    if method == "shards":
        return _shards(y, num_clients, shards_per_client, rng)
    if method == "quantity":
        return _quantity(n, num_clients, alpha, min_size, rng)
    raise ConfigError(f"partition.method: unknown '{method}'; known: " + ", ".join(METHODS))


def _dirichlet(y: np.ndarray, c: int, alpha: float, min_size: int, rng: np.random.Generator) -> Partition:
    classes = np.unique(y)
    by_class = [rng.permutation(np.flatnonzero(y == k)) for k in classes]
    for _ in range(_MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(c)]
        for rows in by_class:
            p = rng.dirichlet(np.full(c, alpha))  # [clients] share of this class
            cuts = (np.cumsum(p)[:-1] * len(rows)).astype(np.int64)
            for client, chunk in enumerate(np.split(rows, cuts)):
                parts[client].append(chunk)
        lists = [np.concatenate(p) for p in parts]
        if min(len(p) for p in lists) >= min_size:
            return Partition.from_lists([rng.permutation(p) for p in lists])
    raise ConfigError(
        f"partition: a Dirichlet(alpha={alpha}) split of {len(y)} rows into {c} clients left a client with fewer "
        f"than partition.min_size={min_size} rows in {_MAX_DRAWS} draws; raise alpha or lower min_size"
    )


def _shards(y: np.ndarray, c: int, per_client: int, rng: np.random.Generator) -> Partition:
    total = c * per_client
    if total > len(y):
        raise ConfigError(f"partition: {total} shards (no_models × shards_per_client) exceed {len(y)} rows")
    by_label = np.argsort(y, kind="stable")
    shards = np.array_split(by_label, total)
    pick = rng.permutation(total).reshape(c, per_client)  # [clients, shards_per_client]
    return Partition.from_lists([np.concatenate([shards[s] for s in row]) for row in pick])


def _quantity(n: int, c: int, alpha: float, min_size: int, rng: np.random.Generator) -> Partition:
    if min_size * c > n:
        raise ConfigError(f"partition: min_size {min_size} × {c} clients exceeds the {n} training rows")
    # Every client first gets min_size rows; the rest is shared by Dirichlet proportions.
    spare = n - min_size * c
    q = rng.dirichlet(np.full(c, alpha))
    extra = np.floor(q * spare).astype(np.int64)
    extra[: spare - extra.sum()] += 1  # hand out the rounding remainder, one row each
    sizes = extra + min_size
    perm = rng.permutation(n)
    return Partition.from_lists(np.split(perm, np.cumsum(sizes)[:-1]))
