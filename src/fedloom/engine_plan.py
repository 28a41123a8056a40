"""The vectorized engine's batch plan: every client's batches of a round, in the reference's order, laid out
step-major for lock-step training (:mod:`fedloom.engine_vectorized`).

Client ``c`` in round ``r`` draws one ``torch.randperm(n_c)`` per epoch from a generator seeded with
:func:`~fedloom.training.client_seed`, exactly as the sequential reference; its batches are consecutive
``batch_size`` slices of that permutation. Clients are sorted by number of steps, most first, so at step ``t`` the
active clients are a prefix of the chunk; short batches are padded with weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data import FedData
from .seeds import cohort_seeds
from .training import _SHUFFLE_TAG, LocalSpec

__all__ = ["Plan", "Layout", "plan_batches", "layout", "steps_per_epoch", "LAYOUTS", "KEEP_LAYOUTS"]


@dataclass
class Plan:
    """Step-major batch plan of one chunk (clients sorted by number of steps, most first).

    At step ``t`` the first ``active[t]`` clients train; their batches are slots
    ``offsets[t]:offsets[t + 1]`` (one slot = one client's batch of one step, padded to ``batch`` rows)."""

    rows: torch.Tensor  # [slots, batch] int64 rows of x_train (0 on padding)
    y: torch.Tensor  # [slots, batch, 1] int64 labels
    weight: torch.Tensor  # [slots, batch, 1] float32 1/b on the b real rows of the batch, 0 on padding
    owner: torch.Tensor  # [slots] int64 position of the slot's client in the chunk
    active: list[int]  # [steps]
    offsets: list[int]  # [steps + 1]

    def to(self, device: torch.device) -> Plan:
        if device.type == "cpu" and self.rows.device.type == "cpu":
            return self
        t = [x.to(device) for x in (self.rows, self.y, self.weight, self.owner)]
        return Plan(*t, self.active, self.offsets)


def steps_per_epoch(n: np.ndarray, batch: int, skip_single: bool) -> np.ndarray:
    """``[clients]`` local steps per epoch for shards of ``n`` rows: ⌈n/B⌉, less a trailing one-row batch
    when ``skip_single`` (BatchNorm; see :mod:`fedloom.training`)."""
    return n // batch + (n % batch > (1 if skip_single else 0))


@dataclass
class Layout:
    """Where each drawn position of a plan goes: everything of a plan that depends only on the clients' shard
    sizes, the batch size and the epochs (kept for cohorts of the same sizes)."""

    kept: np.ndarray  # [Σ_c E·n_c] bool: False only on a skipped trailing one-row batch
    client: np.ndarray  # [kept] the position's client (in the chunk)
    slot: np.ndarray  # [kept] its slot
    column: np.ndarray  # [kept] its column in the slot's batch
    shape: tuple[int, int]  # [slots, batch]
    weight: torch.Tensor  # [slots, batch, 1]
    owner: torch.Tensor  # [slots]
    active: list[int]  # [steps]
    offsets: list[int]  # [steps + 1]


LAYOUTS: dict[tuple, Layout] = {}  # a few recent ones (small cohorts only), oldest first
KEEP_LAYOUTS, _KEEP_POSITIONS = 8, 100_000


def layout(n: np.ndarray, B: int, E: int, skip_single: bool) -> Layout:
    """The :class:`Layout` of shards of ``n`` rows (non-increasing steps): the reference's batches, padded to
    full batches and laid out step-major. Index arithmetic is numpy: for these small arrays its per-call cost
    is a fraction of torch's."""
    key = (tuple(n.tolist()), B, E, skip_single)
    if key in LAYOUTS:
        return LAYOUTS[key]
    C = len(n)
    per_epoch = steps_per_epoch(n, B, skip_single)  # [clients]
    steps = E * per_epoch  # [clients], non-increasing
    active = (steps[None, :] > np.arange(steps.max() if C else 0)[:, None]).sum(1)  # [steps]
    offsets = np.concatenate([[0], np.cumsum(active)]).astype(np.int64)  # [steps + 1]
    # Drawn position j of epoch e of client r goes to slot offsets[e·per_epoch[r] + j // B] + r, column j % B.
    block_len = np.repeat(n, E)  # [clients·epochs] one block per (client, epoch)
    block = np.repeat(np.arange(C * E), block_len)  # [Σ] block of each drawn position
    j = np.arange(len(block)) - (np.cumsum(block_len) - block_len)[block]  # [Σ] position within its epoch
    r, e = block // E, block % E
    kept = j // B < per_epoch[r]  # [Σ]
    j, r, e = j[kept], r[kept], e[kept]
    slot = offsets[e * per_epoch[r] + j // B] + r
    real = np.zeros((int(offsets[-1]), B), dtype=bool)
    real[slot, j % B] = True
    weight = (real / np.maximum(real.sum(1, keepdims=True), 1)).astype(np.float32)[:, :, None]
    owner = np.arange(len(real)) - np.repeat(offsets[:-1], active)  # [slots] the slot's client
    out = Layout(kept, r, slot, j % B, real.shape, torch.from_numpy(weight), torch.from_numpy(owner),
                  active.tolist(), offsets.tolist())  # fmt: skip
    if len(block) <= _KEEP_POSITIONS:
        LAYOUTS[key] = out
        while len(LAYOUTS) > KEEP_LAYOUTS:
            del LAYOUTS[next(iter(LAYOUTS))]
    return out


def plan_batches(
    data: FedData, clients: list[int], spec: LocalSpec, seed: int, round: int, skip_single: bool = False
) -> Plan:
    """The reference's batches of every client (same generator, one randperm per epoch), padded to full
    batches and laid out step-major. ``clients`` must be sorted by number of steps, most first."""
    B, E = spec.batch_size, spec.epochs
    part = data.partition
    first, n = part.offsets[clients], part.offsets[np.add(clients, 1)] - part.offsets[clients]  # [clients]
    perms = []  # the reference's draws: per client a generator from client_seed, one randperm per epoch
    seeds = cohort_seeds(seed, round, clients, _SHUFFLE_TAG, part.num_clients)  # = client_seed of each
    gen = torch.Generator()  # reseeded per client: its state is the seed's, as a fresh generator's would be
    for s, n_c in zip(seeds.tolist(), n.tolist()):
        gen.manual_seed(s)
        perms += [torch.randperm(n_c, generator=gen) for _ in range(E)]
    local = torch.cat(perms).numpy() if perms else np.zeros(0, np.int64)  # [Σ_c E·n_c] positions in shards
    lay = layout(n, B, E, skip_single)
    rows = np.zeros(lay.shape, dtype=np.int64)  # [slots, batch] rows of x_train; padding gathers row 0 (weight 0)
    rows[lay.slot, lay.column] = part.order[first[lay.client] + local[lay.kept]]
    labels = torch.from_numpy(data.y_train.numpy()[rows][:, :, None])  # [slots, batch, 1]
    return Plan(torch.from_numpy(rows), labels, lay.weight, lay.owner, lay.active, lay.offsets)
