"""What the robust (non-linear) rules share: unit weights, float64 arithmetic on updates, pairwise distances.

Conventions common to every rule here:

- Each update counts once, whatever sample count its client reports: a reported count is an attacker's
  free lever (an attacker declaring 10⁶ rows would own a weighted mean), so ``weight`` is 1 and
  ``num_samples`` is ignored.
- The rules work on the updates (``diff_i = local_i − global``), in float64. Squared distances are taken by
  direct differences (:func:`pairwise_sq_dists`), never as ‖x‖² + ‖y‖² − 2x·y, which on float32 weights
  loses every digit when the vectors are large and nearly equal (a 10⁶-parameter model whose updates differ
  by 10⁻⁴).
- None of them is a function of the sum of updates, so ``linear = False`` and secure aggregation refuses them.
- Partial updates (``present``): a rule with ``partial = True`` computes each coordinate over its senders and
  agrees with its dense path when everybody sent everything; the others refuse partial updates (config
  loading refuses the layer codec with them; :meth:`aggregate` refuses a mask as a last guard).
"""

from __future__ import annotations

import torch

from ..aggregator_spec import cohort_problem, resolve_f
from ..errors import FedloomError
from .base import Aggregator

__all__ = ["RobustAggregator", "AggregationError", "pairwise_sq_dists"]


class AggregationError(FedloomError):
    """A robust rule cannot run on this round's updates (too few for its f, or partial updates)."""


class RobustAggregator(Aggregator):
    linear = False
    partial = False  # whether partial updates (a ``present`` mask) are handled

    def weight(self, num_samples: int) -> float:
        return 1.0  # see the module docstring: reported sample counts are ignored

    def finish(self, global_vec: torch.Tensor, weighted_sum: torch.Tensor, total_weight: float) -> torch.Tensor:
        raise TypeError(f"{self.name} is not a function of the sum of updates")

    def aggregate(self, global_vec, diffs, num_samples, present=None) -> torch.Tensor:
        if diffs.shape[0] == 0:
            return global_vec.clone()
        if present is not None and bool(present.all()):
            present = None  # everybody sent everything: the dense path
        if present is not None and not self.partial:
            raise AggregationError(f"aggregator {self.name} needs whole updates; this round has partial ones")
        step = self.combine(diffs.to(torch.float64), present)  # [params] float64
        return global_vec + step.to(global_vec.dtype)

    def combine(self, diffs: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """The aggregated update ``[params]`` from ``diffs`` ``[clients, params]`` float64."""
        raise NotImplementedError

    def f_for(self, n: int, f: int | None, m: int | None = None) -> int:
        """This round's f (configured or the default) after checking the rule's condition on n."""
        f = resolve_f(self.name, f, n)
        problem = cohort_problem(self.name, f, n, m)
        if problem:
            raise AggregationError(f"{problem}: lower aggregator.f or raise runtime.min_clients")
        return f


def pairwise_sq_dists(x: torch.Tensor) -> torch.Tensor:
    """``[n, n]`` float64 squared L2 distances between the rows of ``x`` ``[n, params]``, by direct
    differences (torch.cdist without its matrix-product shortcut), exact to float64 rounding whatever the
    rows' own size; equal distances come out equal, so ties are broken by index, not by rounding."""
    x = x.to(torch.float64)
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
