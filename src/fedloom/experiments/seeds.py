"""Repeating an experiment over seeds and reporting every number as mean ± standard deviation.

One seed decides little: the split, the partition, the initial model, the sampling and the batch order all
follow it, and on MNIST the compression sweep's differences from fp32 move by several points between seeds.
An experiment runs each of its settings with seeds ``seed, seed+1, …, seed+seeds−1`` (``seeds`` in the config,
``--seeds N`` on the command line) and merges the same row of every seed into one row.

The standard deviation is the **sample** standard deviation (``ddof=1``, divisor ``N − 1``): the seeds are a
sample of the seeds one could have drawn. With one seed it is undefined and reported as ``None``
(``null`` in JSON, blank in tables).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..config import Config

__all__ = ["seed_list", "mean_std", "merge_rows", "merge_seeds", "cell"]


def seed_list(cfg: Config) -> list[int]:
    return [cfg.seed + i for i in range(cfg.seeds)]


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1); None where a value is missing or there is one seed."""
    if not values or any(v is None for v in values):
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    return mean, (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool))


def merge_rows(rows: list[dict], keys: tuple[str, ...]) -> dict:
    """The same row from every seed → one row.

    ``keys`` name the row's identity (method, setting, client…), which must agree across seeds and are kept
    as they are. Every other number ``x`` becomes ``x_mean``, ``x_std`` and ``x_per_seed``; a list of numbers
    (a curve) becomes element-wise ``x_mean``, ``x_std`` and ``x_per_seed``; text is kept when every seed
    agrees, else the distinct values are joined with "; ".
    """
    first = rows[0]
    out: dict[str, Any] = {}
    for key in keys:
        if any(r.get(key) != first.get(key) for r in rows):
            raise ValueError(f"rows of different seeds disagree on {key!r}")  # an experiment's own bug
        out[key] = first.get(key)
    for name in first:
        if name in keys:
            continue
        values = [r.get(name) for r in rows]
        if all(_is_number(v) for v in values):  # None: not measured (e.g. an extrapolated row's accuracy)
            out[f"{name}_mean"], out[f"{name}_std"] = mean_std(values)
            out[f"{name}_per_seed"] = values
        elif all(isinstance(v, list) for v in values):
            pairs = [mean_std(list(col)) for col in zip(*values)]  # per round across seeds
            out[f"{name}_mean"] = [m for m, _ in pairs]
            out[f"{name}_std"] = [s for _, s in pairs]
            out[f"{name}_per_seed"] = values
        else:
            distinct = list(dict.fromkeys("" if v is None else str(v) for v in values))
            out[name] = "; ".join(d for d in distinct if d) or first.get(name)
    return out


def merge_seeds(per_seed: list[list[dict]], keys: tuple[str, ...]) -> list[dict]:
    """Per-seed tables (the same rows in the same order) → one table of merged rows."""
    if len({len(rows) for rows in per_seed}) != 1:
        raise ValueError("seeds produced tables of different lengths")
    return [merge_rows(list(group), keys) for group in zip(*per_seed)]


def cell(row: dict, name: str) -> str:
    """``mean ± std`` for a table cell (``mean`` alone with one seed)."""
    mean, std = row.get(f"{name}_mean"), row.get(f"{name}_std")
    if mean is None:
        return ""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return _fmt(mean)
    return f"{_fmt(mean)} ± {_fmt(std)}"


def _fmt(v: float) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if abs(v) < 1e7 and float(v).is_integer():  # counts (rows, steps, bytes) stay exact
        return str(int(v))
    if abs(v) <= 1:
        return f"{v:.4f}"
    return f"{v:.2f}" if abs(v) < 1e4 else f"{v:.4g}"
