"""The privacy accountant: Google's ``dp-accounting`` (RDP), fed the mechanism the run actually performs.

Client-level accounting (McMahan et al., ICLR 2018, "Learning Differentially Private Recurrent Language
Models"): one *unit* of privacy is a client's whole data; a round releases the noised sum of the cohort's
clipped updates, i.e. a sampled Gaussian mechanism whose sensitivity is the clip norm ``C``. Which event is
composed depends on the sampler that ran (never on the one we would like to have had):

* ``poisson`` sampling (each client joins with probability ``q = k/N``) under add/remove-one neighbours:
  ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))`` — the amplification of Mironov et al. 2019
  ("Rényi Differential Privacy of the Sampled Gaussian Mechanism").
* ``fixed`` sampling (exactly ``k`` of ``N`` without replacement) under replace-one neighbours:
  ``SampledWithoutReplacementDpEvent(N, k, GaussianDpEvent(σ/2))`` — Wang, Balle & Kasiviswanathan 2019,
  Theorem 27. Replacing one client's update by another moves the sum by up to ``2C``, so the Gaussian's
  multiplier relative to that sensitivity is ``σ/2``. Add/remove neighbours would need a random cohort size,
  which a fixed sampler does not have, so no add/remove amplification is claimed for it.
* ``local`` mode (each client noises its own update; the server knows who took part): no amplification;
  a client's uploads are ``m`` Gaussian releases with sensitivity ``2C`` (any two updates of that client),
  ``m`` = the most rounds any one client was sampled for so far.

A missing ``dp-accounting`` is one line naming the extra (:class:`~fedloom.errors.FedloomError`, exit 2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import FedloomError

__all__ = ["Accountant", "Plan", "solve_noise", "dp_accounting"]

# the orders Opacus's RDP accountant uses: fine near 1, integers up to 63
ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


def dp_accounting():
    """The ``dp_accounting`` module, or one line saying which extra installs it."""
    try:
        import dp_accounting as dpa
    except ImportError:
        raise FedloomError(
            "privacy: differential privacy needs the 'privacy' extra (Google's dp-accounting): "
            "pip install 'fedloom[privacy]'"
        ) from None
    return dpa


@dataclass(frozen=True)
class Plan:
    """What one round releases, as the accountant sees it."""

    sampling: str  # "poisson" | "fixed"
    mode: str  # "central" | "local"
    num_clients: int  # N
    cohort: int  # k (fixed) or the expected cohort k = qN (poisson)
    noise_multiplier: float  # σ: noise std / clip on the sum (central) or on each update (local)

    @property
    def relation(self) -> str:
        add_remove = self.sampling == "poisson" and self.mode == "central"
        return "add/remove one client" if add_remove else "replace one client"

    @property
    def why(self) -> str:
        """The sentence summary.json carries: which accounting and why."""
        if self.mode == "local":
            return (
                "local DP: each client's update is a Gaussian release of sensitivity 2*clip (replace-one); the server "
                "knows who took part, so no sampling amplification; composed over the most rounds a client was picked"
            )
        if self.sampling == "poisson":
            return (
                f"central DP, Poisson sampling with q = k/N = {self.cohort}/{self.num_clients}: add/remove-one "
                "client neighbours, amplified sampled Gaussian (RDP, dp-accounting)"
            )
        return (
            f"central DP, fixed-size sampling of {self.cohort} of {self.num_clients} without replacement: "
            "replace-one client neighbours (sensitivity 2*clip), amplification by sampling without replacement "
            "(Wang, Balle & Kasiviswanathan 2019; RDP, dp-accounting); no add/remove claim"
        )

    def event(self, rounds: int):
        """The dp-accounting event of ``rounds`` rounds (local: ``rounds`` releases of one client)."""
        dpa = dp_accounting()
        sigma = self.noise_multiplier
        if self.mode == "local":
            one = dpa.GaussianDpEvent(sigma / 2)
        elif self.sampling == "poisson":
            one = dpa.PoissonSampledDpEvent(self.cohort / self.num_clients, dpa.GaussianDpEvent(sigma))
        else:
            one = dpa.SampledWithoutReplacementDpEvent(self.num_clients, self.cohort, dpa.GaussianDpEvent(sigma / 2))
        return dpa.SelfComposedDpEvent(one, rounds)

    def accountant(self):
        dpa = dp_accounting()
        from dp_accounting.rdp import rdp_privacy_accountant as rdp

        rel = dpa.NeighboringRelation
        relation = rel.ADD_OR_REMOVE_ONE if self.relation.startswith("add") else rel.REPLACE_ONE
        return rdp.RdpAccountant(list(ORDERS), relation)


class Accountant:
    """ε after ``rounds`` rounds of :class:`Plan` at ``delta`` (0 rounds: ε = 0).

    RDP composes by addition, so one round's RDP curve is computed once (by dp-accounting) and ``rounds``
    times it is converted to (ε, δ) by dp-accounting's ``compute_epsilon``: the same number as composing the
    ``rounds``-fold event, without recomputing the subsampled Gaussian's curve every round."""

    name = "rdp (dp-accounting)"

    def __init__(self, plan: Plan, delta: float):
        self.plan, self.delta = plan, delta
        dp_accounting()  # fail early, with the one line
        self._one = None  # one round's RDP at ORDERS

    def _one_round(self):
        if self._one is None:
            acc = self.plan.accountant()
            # dp-accounting logs (absl) each fractional order whose series does not converge, and drops it (its
            # RDP becomes inf); ε is the minimum over the other orders, still an upper bound: not worth a warning
            absl = logging.getLogger("absl")
            level = absl.level
            absl.setLevel(logging.ERROR)
            try:
                acc.compose(self.plan.event(1))
            finally:
                absl.setLevel(level)
            self._one = acc._rdp.copy()  # dp-accounting 0.6.0 (pinned) keeps the composed curve here
        return self._one

    def epsilon(self, rounds: int) -> float:
        if rounds <= 0:
            return 0.0
        if self.plan.noise_multiplier <= 0:
            return float("inf")
        from dp_accounting.rdp import rdp_privacy_accountant as rdp

        return float(rdp.compute_epsilon(list(ORDERS), rounds * self._one_round(), self.delta)[0])


def solve_noise(plan: Plan, rounds: int, delta: float, target_epsilon: float) -> float:
    """The smallest noise multiplier σ (to about 1e-3) whose ε after ``rounds`` is ≤ ``target_epsilon``.

    ε is decreasing in σ: bracket by doubling, then bisect (dp-accounting's ``calibrate_dp_mechanism`` does
    the same; written here so that the tolerance is ours and the result is always on the safe side)."""

    def eps(sigma: float) -> float:
        return Accountant(Plan(plan.sampling, plan.mode, plan.num_clients, plan.cohort, sigma), delta).epsilon(rounds)

    lo, hi = 0.0, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise FedloomError(f"privacy.target_epsilon {target_epsilon:g} cannot be reached with any noise multiplier")
    while hi - lo > 1e-3 * max(hi, 1e-3):
        mid = (lo + hi) / 2
        if eps(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
