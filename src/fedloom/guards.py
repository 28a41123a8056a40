"""Checks the round loop makes so that a run never ends with wrong numbers and exit 0 without a word.

- :func:`check_memory_limit`: before round 1, a ``runtime.client_memory_mb`` below what every client needs
  is a config error (otherwise every client refuses every round and nothing is learned).
- :func:`divergence`: after each round, a non-finite global model or evaluation loss stops the run; the
  caller keeps what was written, warns once and records ``diverged_at_round`` in the summary.
"""

from __future__ import annotations

import math
import sys

import torch

from .errors import ConfigError

__all__ = ["check_memory_limit", "divergence", "warn", "fmt_mb"]


def fmt_mb(mb: float) -> str:
    """Megabytes with three significant digits, so small sizes do not round to 0.0."""
    return f"{mb:.3g} MB"


def warn(message: str) -> None:
    """One warning line on stderr (the CLI's errors use the same ``fedloom:`` prefix)."""
    print(f"fedloom: warning: {message}", file=sys.stderr, flush=True)


def check_memory_limit(clients, num_params: int, spec, limit_mb: float | None) -> None:
    """Refuse a per-client memory limit that no client fits (``clients``: objects with ``memory_needed_mb``)."""
    if limit_mb is None or not clients:
        return
    needs = [c.memory_needed_mb(num_params, spec) for c in clients]
    if min(needs) > limit_mb:
        raise ConfigError(
            f"runtime.client_memory_mb {limit_mb:g}: every client needs more (the smallest task needs "
            f"{fmt_mb(min(needs))}, the largest {fmt_mb(max(needs))}); raise it or drop it"
        )


def divergence(global_vec: torch.Tensor, row: dict) -> str:
    """Why the run has diverged after this round ('' when it has not): non-finite model or eval loss."""
    if not bool(torch.isfinite(global_vec).all()):
        return "the global model holds non-finite values"
    loss = row.get("loss")
    if isinstance(loss, float) and not math.isfinite(loss):
        return "the evaluation loss is not finite"
    return ""
