"""Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", Algorithm 1 option I): ``G ← G + median_i diff_i``, coordinate by coordinate; with an
even number of values the median is the mean of the two middle ones, whether every client sent the
coordinate or only some did (partial updates: the median over its senders).

Robust to a minority of arbitrary updates, and not linear: it cannot be computed from an encrypted sum, so
secure aggregation refuses it. Sample counts are ignored (as in the paper).
"""

from __future__ import annotations

import torch

from .base import Aggregator

__all__ = ["CoordinateMedian"]


class CoordinateMedian(Aggregator):
    name = "median"
    linear = False

    def weight(self, num_samples: int) -> float:
        return 1.0

    def finish(self, global_vec: torch.Tensor, weighted_sum: torch.Tensor, total_weight: float) -> torch.Tensor:
        raise TypeError("the median is not a function of the sum of updates")

    def aggregate(self, global_vec, diffs, num_samples, present=None) -> torch.Tensor:
        if diffs.shape[0] == 0:
            return global_vec.clone()
        # torch.median / nanmedian return the lower of the two middle values; the textbook median of an even
        # count is the mean of both, which (nan)quantile(0.5) with linear interpolation gives.
        if present is not None:
            diffs = diffs.masked_fill(~present, float("nan"))  # a coordinate's median over its senders only
            med = torch.nanquantile(diffs, 0.5, dim=0).nan_to_num(0.0)  # [params]; nobody sent it: no change
        else:
            med = torch.quantile(diffs, 0.5, dim=0)  # [params]
        return global_vec + med
