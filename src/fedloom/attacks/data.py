"""Data-poisoning attacks: the attackers train, on the same engine as everybody, on doctored rows.

- ``label_flip``: every label ``c`` of an attacker's rows becomes ``C − 1 − c`` (C classes).
- ``backdoor`` (the book's 15.1, after Bagdasaryan et al. 2020, "How To Backdoor Federated Learning"): a
  share of an attacker's rows get a trigger (``trigger`` feature indices set to ``trigger_value``: a pixel
  pattern when rows are images) and the label ``poison_label``. The book poisons ``poisoning_per_batch``
  rows of every batch; here the same share of the attacker's rows (``poisoning_per_batch / batch_size``,
  chosen once from the seed) is poisoned and the batches are shuffled as usual, so a batch holds
  ``poisoning_per_batch`` poisoned rows on average, not exactly.

The doctored copy is a new :class:`~fedloom.data.FedData`; the honest clients' rows are untouched.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..params import load_into

__all__ = ["flip_labels", "poison_rows", "default_trigger", "apply_trigger", "backdoor_accuracy"]


def flip_labels(data, attackers: list[int]):
    """A copy of ``data`` in which the attackers' labels ``c`` are ``C − 1 − c``."""
    y = data.y_train.clone()
    rows = _rows(data, attackers)
    y[rows] = data.num_classes - 1 - y[rows]
    return dataclasses.replace(data, y_train=y)


def default_trigger(data) -> list[int]:
    """A 2×2 pixel square in the bottom-right corner of image rows (every channel); else the last 4 features."""
    if data.image_shape is None:
        return list(range(data.num_features - 4, data.num_features))
    c, h, w = data.image_shape
    return [ch * h * w + r * w + col for ch in range(c) for r in (h - 2, h - 1) for col in (w - 2, w - 1)]


def apply_trigger(x: torch.Tensor, trigger: list[int], value: float) -> torch.Tensor:
    """A copy of rows ``x`` ``[rows, features]`` with the trigger's features set to ``value``."""
    x = x.clone()
    x[:, trigger] = value
    return x


def poison_rows(data, attackers: list[int], share: float, trigger: list[int], value: float, label: int, seed: int):
    """A copy of ``data`` in which ``⌈share × rows⌉`` of each attacker's rows (seeded) carry the trigger and
    ``label``; returns ``(copy, poisoned row indices)``."""
    x, y = data.x_train.clone(), data.y_train.clone()
    picked = []
    for c in attackers:
        rows = data.client_indices(c).numpy()
        k = min(len(rows), int(np.ceil(share * len(rows))))
        picked.append(np.random.default_rng([seed, c, 15, 1]).choice(rows, size=k, replace=False))
    rows = torch.from_numpy(np.sort(np.concatenate(picked))) if picked else torch.zeros(0, dtype=torch.int64)
    x[rows] = apply_trigger(x[rows], trigger, value)
    y[rows] = label
    return dataclasses.replace(data, x_train=x, y_train=y), rows


@torch.no_grad()
def backdoor_accuracy(model, vec: torch.Tensor, x_eval, y_eval, trigger: list[int], value: float, label: int) -> float:
    """The backdoor's success: the share of triggered eval rows whose true label is not ``label`` that the
    model ``vec`` classifies as ``label`` (NaN when every eval row has that label)."""
    keep = y_eval != label
    if not bool(keep.any()):
        return float("nan")
    load_into(model, vec)
    model.eval()
    pred = model(apply_trigger(x_eval[keep], trigger, value)).argmax(1)
    return float((pred == label).float().mean())


def _rows(data, clients: list[int]) -> torch.Tensor:
    if not clients:
        return torch.zeros(0, dtype=torch.int64)
    return torch.cat([data.client_indices(c) for c in clients])
