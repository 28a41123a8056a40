"""Server-side helpers for decoded cohorts: batch decoding and the book's per-coordinate average.

``aggregate_present`` is the book's 15.3 server rule ("average each layer over the clients that sent
it": ``weight_accumulator[name] * (1.0 / cnt[name])``), generalized to weights and to coordinates:

    out_j = sum_c w_c * present_cj * v_cj / sum_c w_c * present_cj,   out_j = 0 if nobody sent j

With ``present`` None every client counts for every coordinate and this is the weighted mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedloom.codecs.base import Codec, CodecContext
from fedloom.params import Layout

__all__ = ["aggregate_present", "decode_batch"]


def aggregate_present(values: torch.Tensor, present: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor:
    """Per-coordinate weighted mean ``[params]`` of ``values`` ``[clients, params]`` over senders."""
    if values.ndim != 2 or weights.shape != (values.shape[0],):
        raise ValueError(
            f"expected values [clients, params] and weights [clients], got "
            f"{tuple(values.shape)} and {tuple(weights.shape)}"
        )
    if bool((weights < 0).any()):
        raise ValueError("weights must be non-negative")
    w = weights.to(values.dtype)[:, None]  # [clients, 1]
    if present is None:
        total = w.sum()
        return (w * values).sum(0) / total if total > 0 else torch.zeros_like(values[0])
    if present.shape != values.shape:
        raise ValueError(f"present {tuple(present.shape)} must match values {tuple(values.shape)}")
    wp = w * present.to(values.dtype)  # [clients, params]
    den = wp.sum(0)  # [params]
    num = (wp * values).sum(0)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(values.dtype).tiny), torch.zeros_like(num))


def decode_batch(
    codec: Codec,
    payloads: Sequence[bytes],
    client_ids: Sequence[int],
    *,
    layout: Layout,
    round: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode a cohort: ``(values [clients, params], present [clients, params] bool or None)``.

    ``present`` is None when no payload set it; otherwise clients without it count as sending everything.
    """
    decoded = [
        codec.decode(b, CodecContext(layout, int(c), round, seed)) for b, c in zip(payloads, client_ids, strict=True)
    ]
    values = torch.stack([d.values for d in decoded])  # [clients, params]
    if all(d.present is None for d in decoded):
        return values, None
    full = torch.ones(layout.size, dtype=torch.bool)
    return values, torch.stack([full if d.present is None else d.present for d in decoded])
